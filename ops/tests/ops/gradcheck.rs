//! Central finite differences in f64: the independent check of every backward.

/// d f / d x_i for every i, by (f(x + h e_i) - f(x - h e_i)) / 2h.
pub fn numeric_grad(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = x[i];
            let h = 1e-5 * orig.abs().max(1.0);
            x[i] = orig + h;
            let up = f(&x);
            x[i] = orig - h;
            let down = f(&x);
            x[i] = orig;
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// sum(a * b): the scalar a backward is checked through (`b` plays the output gradient).
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `after - before`, elementwise: what an accumulating backward added to a gradient.
pub fn added(after: &[f64], before: &[f64]) -> Vec<f64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

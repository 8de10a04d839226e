//! Authoring a custom fused op: bias + GELU (tanh approximation) over the rows of a matrix,
//! written in Kiln, compiled at run time, launched on the CPU and on a GPU when one is present,
//! and checked against a plain Rust reference.
//!
//! Run: `cargo run --example custom_op`

use kiln::compiler::{DType, Source};
use kiln::runtime::{Args, Device, KernelCache, KernelSpec};

const SOURCE: &str = r#"
// y[r, c] = gelu(x[r, c] + bias[c]); one program per row, columns in tiles of BLOCK.
fn gelu(v: f32) { 0.5 * v * (1.0 + tanh(0.7978845608 * (v + 0.044715 * v * v * v))) }

kernel bias_gelu<BLOCK: i32 = 256>(x: *f32, bias: *f32, y: *mut f32, n: i32) {
    let row = program_id(0);
    for start in 0..n step BLOCK {
        let cols = start + range(BLOCK);
        let m = cols < n;
        let v = load(x + row * n + cols, mask: m, other: 0.0) + load(bias + cols, mask: m, other: 0.0);
        store(y + row * n + cols, gelu(v), mask: m);
    }
}
"#;

fn reference(x: &[f32], bias: &[f32], n: usize) -> Vec<f32> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let v = (v + bias[i % n]) as f64;
            (0.5 * v * (1.0 + (0.7978845608 * (v + 0.044715 * v * v * v)).tanh())) as f32
        })
        .collect()
}

fn run(device: &Device) -> Result<(), Box<dyn std::error::Error>> {
    let (rows, n) = (33usize, 700usize);
    let x: Vec<f32> = (0..rows * n)
        .map(|i| ((i * 7919) % 997) as f32 / 250.0 - 2.0)
        .collect();
    let bias: Vec<f32> = (0..n).map(|i| (i % 13) as f32 / 13.0 - 0.5).collect();
    let src = Source::new("bias_gelu.kiln", SOURCE);
    let cache = KernelCache::in_memory();
    let (xb, bb) = (device.upload(&x)?, device.upload(&bias)?);
    let mut yb = device.alloc(DType::F32, rows * n)?;
    let args = Args::new()
        .input("x", &xb)
        .input("bias", &bb)
        .output("y", &mut yb)
        .i32("n", n as i32);
    cache.launch(
        device,
        &KernelSpec::new(&src, "bias_gelu"),
        [rows as u32, 1, 1],
        &args,
    )?;
    let y: Vec<f32> = yb.download()?;
    let want = reference(&x, &bias, n);
    let worst = y
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
        .fold(0.0, f32::max);
    println!("{device}: bias_gelu on {rows} x {n}, worst relative error {worst:.2e}");
    if worst.is_nan() || worst > 1e-5 {
        return Err(format!("{device}: result differs from the reference ({worst})").into());
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    run(&Device::cpu())?;
    match Device::cuda(0) {
        Ok(gpu) => run(&gpu)?,
        Err(e) => println!("skipped on GPU: {e}"),
    }
    Ok(())
}

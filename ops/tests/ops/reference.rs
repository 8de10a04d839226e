//! Straightforward f64 references for every shipped kernel, written from the math, not from the
//! kernels. Inputs are given as f64 (already rounded to the kernel's input dtype).

/// RMSNorm forward of `rows x n`: (y, rstd).
pub fn rmsnorm_fwd(x: &[f64], w: &[f64], n: usize, eps: f64) -> (Vec<f64>, Vec<f64>) {
    let rows = x.len() / n;
    let mut y = vec![0.0; x.len()];
    let mut rstd = vec![0.0; rows];
    for r in 0..rows {
        let row = &x[r * n..(r + 1) * n];
        let ms = row.iter().map(|v| v * v).sum::<f64>() / n as f64;
        let s = 1.0 / (ms + eps).sqrt();
        rstd[r] = s;
        for c in 0..n {
            y[r * n + c] = row[c] * s * w[c];
        }
    }
    (y, rstd)
}

/// RMSNorm backward: (dx, dw), from the definition y_c = x_c * s * w_c with
/// s = (mean(x^2) + eps)^-1/2, so ds/dx_c = -s^3 x_c / n.
pub fn rmsnorm_bwd(x: &[f64], w: &[f64], dy: &[f64], n: usize, eps: f64) -> (Vec<f64>, Vec<f64>) {
    let rows = x.len() / n;
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; n];
    for r in 0..rows {
        let row = &x[r * n..(r + 1) * n];
        let g = &dy[r * n..(r + 1) * n];
        let ms = row.iter().map(|v| v * v).sum::<f64>() / n as f64;
        let s = 1.0 / (ms + eps).sqrt();
        // dL/ds = sum_c g_c * w_c * x_c
        let dl_ds: f64 = (0..n).map(|c| g[c] * w[c] * row[c]).sum();
        for c in 0..n {
            dx[r * n + c] = g[c] * w[c] * s + dl_ds * (-s * s * s * row[c] / n as f64);
            dw[c] += g[c] * row[c] * s;
        }
    }
    (dx, dw)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// SwiGLU forward: silu(gate) * up.
pub fn swiglu_fwd(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gate.iter()
        .zip(up)
        .map(|(g, u)| g * sigmoid(*g) * u)
        .collect()
}

/// SwiGLU backward: (dgate, dup).
pub fn swiglu_bwd(gate: &[f64], up: &[f64], dout: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut dg = vec![];
    let mut du = vec![];
    for i in 0..gate.len() {
        let (g, u, d) = (gate[i], up[i], dout[i]);
        let s = sigmoid(g);
        // d/dg [g s(g)] = s + g s (1 - s)
        dg.push(d * u * (s + g * s * (1.0 - s)));
        du.push(d * g * s);
    }
    (dg, du)
}

/// Hugging Face RoPE (`rotate_half` layout) applied to `x: [tokens, heads, dim]` in place;
/// `inverse` rotates by the opposite angle (the backward pass).
pub fn rope(x: &mut [f64], positions: &[i32], heads: usize, dim: usize, theta: f64, inverse: bool) {
    let half = dim / 2;
    for (t, &pos) in positions.iter().enumerate() {
        for h in 0..heads {
            let base = (t * heads + h) * dim;
            for i in 0..half {
                let inv_freq = theta.powf(-2.0 * i as f64 / dim as f64);
                let angle = pos as f64 * inv_freq;
                let (s, c) = angle.sin_cos();
                let s = if inverse { -s } else { s };
                let (x1, x2) = (x[base + i], x[base + i + half]);
                x[base + i] = x1 * c - x2 * s;
                x[base + i + half] = x2 * c + x1 * s;
            }
        }
    }
}

/// Cross-entropy per row of `logits: [rows, vocab]`: (loss, lse); ignored rows get loss 0.
pub fn cross_entropy_fwd(
    logits: &[f64],
    labels: &[i32],
    vocab: usize,
    ignore: i32,
) -> (Vec<f64>, Vec<f64>) {
    let mut loss = vec![];
    let mut lse = vec![];
    for (r, &label) in labels.iter().enumerate() {
        let row = &logits[r * vocab..(r + 1) * vocab];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let l = m + row.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
        lse.push(l);
        loss.push(if label == ignore {
            0.0
        } else {
            l - row[label as usize]
        });
    }
    (loss, lse)
}

/// Gradient of sum(dloss[r] * loss[r]) with respect to the logits.
pub fn cross_entropy_bwd(
    logits: &[f64],
    labels: &[i32],
    dloss: &[f64],
    vocab: usize,
    ignore: i32,
) -> Vec<f64> {
    let (_, lse) = cross_entropy_fwd(logits, labels, vocab, ignore);
    let mut d = vec![0.0; logits.len()];
    for (r, &label) in labels.iter().enumerate() {
        if label == ignore {
            continue;
        }
        for c in 0..vocab {
            let p = (logits[r * vocab + c] - lse[r]).exp();
            let onehot = if c as i32 == label { 1.0 } else { 0.0 };
            d[r * vocab + c] = (p - onehot) * dloss[r];
        }
    }
    d
}

/// Hyper-parameters of one AdamW step (bias corrections precomputed for step t).
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: i32,
}

/// One AdamW step (decoupled weight decay, PyTorch's formulation with bias correction).
pub fn adamw(p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64], grad_scale: f64, h: &AdamW) {
    let b1 = 1.0 - h.beta1.powi(h.step);
    let b2 = 1.0 - h.beta2.powi(h.step);
    for i in 0..p.len() {
        let gi = g[i] * grad_scale;
        m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * gi;
        v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * gi * gi;
        let update = (m[i] / b1) / ((v[i] / b2).sqrt() + h.eps) + h.weight_decay * p[i];
        // Decoupled decay on the old weight: p - lr·wd·p - lr·m̂/(√v̂ + eps).
        p[i] -= h.lr * update;
    }
}

/// Cross-entropy of `logits = hidden[T, H] · W[V, H]ᵀ` as the model uses it: the mean over
/// tokens whose label is not `ignore` of `lse - logit[label] + z · lse²`.
pub struct LinearCrossEntropy<'a> {
    pub labels: &'a [i32],
    pub hidden_dim: usize,
    pub ignore: i32,
    pub z_loss: f64,
}

impl LinearCrossEntropy<'_> {
    fn logits(&self, hidden: &[f64], w: &[f64]) -> (Vec<f64>, usize) {
        let h = self.hidden_dim;
        let (t, v) = (hidden.len() / h, w.len() / h);
        let mut z = vec![0.0; t * v];
        for r in 0..t {
            for c in 0..v {
                z[r * v + c] = (0..h).map(|i| hidden[r * h + i] * w[c * h + i]).sum();
            }
        }
        (z, v)
    }

    fn counted(&self) -> usize {
        self.labels.iter().filter(|&&l| l != self.ignore).count()
    }

    /// Every token's loss (0 where the label is ignored).
    pub fn losses(&self, hidden: &[f64], w: &[f64]) -> Vec<f64> {
        let (z, v) = self.logits(hidden, w);
        let (_, lse) = cross_entropy_fwd(&z, self.labels, v, self.ignore);
        (0..self.labels.len())
            .map(|r| match self.labels[r] {
                l if l == self.ignore => 0.0,
                l => lse[r] - z[r * v + l as usize] + self.z_loss * lse[r] * lse[r],
            })
            .collect()
    }

    /// The mean loss.
    pub fn loss(&self, hidden: &[f64], w: &[f64]) -> f64 {
        let total: f64 = self.losses(hidden, w).iter().sum();
        total / self.counted().max(1) as f64
    }

    /// (dhidden, dW) of `dloss x` the mean loss, from the softmax directly.
    pub fn gradients(&self, hidden: &[f64], w: &[f64], dloss: f64) -> (Vec<f64>, Vec<f64>) {
        let h = self.hidden_dim;
        let (z, v) = self.logits(hidden, w);
        let (_, lse) = cross_entropy_fwd(&z, self.labels, v, self.ignore);
        let scale = dloss / self.counted().max(1) as f64;
        let mut dh = vec![0.0; hidden.len()];
        let mut dw = vec![0.0; w.len()];
        for (r, &label) in self.labels.iter().enumerate() {
            if label == self.ignore {
                continue;
            }
            for c in 0..v {
                let p = (z[r * v + c] - lse[r]).exp();
                let onehot = if c as i32 == label { 1.0 } else { 0.0 };
                let g = (p * (1.0 + 2.0 * self.z_loss * lse[r]) - onehot) * scale;
                for i in 0..h {
                    dh[r * h + i] += g * w[c * h + i];
                    dw[c * h + i] += g * hidden[r * h + i];
                }
            }
        }
        (dh, dw)
    }
}

/// Causal attention within each sequence of a pack, grouped-query heads, in f64.
pub struct PackedAttention<'a> {
    pub cu_seqlens: &'a [usize],
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl PackedAttention<'_> {
    fn scale(&self) -> f64 {
        1.0 / (self.head_dim as f64).sqrt()
    }

    fn at<'x>(&self, x: &'x [f64], heads: usize, t: usize, h: usize) -> &'x [f64] {
        let d = self.head_dim;
        &x[(t * heads + h) * d..(t * heads + h + 1) * d]
    }

    /// Probabilities of query token `i` (head `h`) over the keys of its sequence up to itself.
    fn probs(&self, q: &[f64], k: &[f64], start: usize, i: usize, h: usize) -> Vec<f64> {
        let kvh = h / (self.q_heads / self.kv_heads);
        let qi = self.at(q, self.q_heads, i, h);
        let s: Vec<f64> = (start..=i)
            .map(|j| dot_f64(qi, self.at(k, self.kv_heads, j, kvh)) * self.scale())
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|x| x / z).collect()
    }

    /// The output `[tokens, q_heads, head_dim]`.
    pub fn forward(&self, q: &[f64], k: &[f64], v: &[f64]) -> Vec<f64> {
        let (hq, d) = (self.q_heads, self.head_dim);
        let mut o = vec![0.0; q.len()];
        for w in self.cu_seqlens.windows(2) {
            for i in w[0]..w[1] {
                for h in 0..hq {
                    let kvh = h / (hq / self.kv_heads);
                    let p = self.probs(q, k, w[0], i, h);
                    for (n, j) in (w[0]..=i).enumerate() {
                        let vj = self.at(v, self.kv_heads, j, kvh);
                        for c in 0..d {
                            o[(i * hq + h) * d + c] += p[n] * vj[c];
                        }
                    }
                }
            }
        }
        o
    }

    /// (dq, dk, dv) of sum(o * d_o), from the softmax Jacobian directly.
    pub fn backward(
        &self,
        q: &[f64],
        k: &[f64],
        v: &[f64],
        d_o: &[f64],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (hq, hkv, d) = (self.q_heads, self.kv_heads, self.head_dim);
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        for w in self.cu_seqlens.windows(2) {
            for i in w[0]..w[1] {
                for h in 0..hq {
                    let kvh = h / (hq / hkv);
                    let p = self.probs(q, k, w[0], i, h);
                    let doi = self.at(d_o, hq, i, h);
                    // dp_j = d_o · v_j; ds_j = p_j (dp_j - sum_n p_n dp_n)
                    let dp: Vec<f64> = (w[0]..=i)
                        .map(|j| dot_f64(doi, self.at(v, hkv, j, kvh)))
                        .collect();
                    let mean: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                    for (n, j) in (w[0]..=i).enumerate() {
                        let ds = p[n] * (dp[n] - mean) * self.scale();
                        for c in 0..d {
                            dv[(j * hkv + kvh) * d + c] += p[n] * doi[c];
                            dq[(i * hq + h) * d + c] += ds * k[(j * hkv + kvh) * d + c];
                            dk[(j * hkv + kvh) * d + c] += ds * q[(i * hq + h) * d + c];
                        }
                    }
                }
            }
        }
        (dq, dk, dv)
    }
}

fn dot_f64(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `a @ b` for row-major `a` (`m x k`) and `b` (`k x n`).
pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for p in 0..k {
            let x = a[i * k + p];
            for j in 0..n {
                c[i * n + j] += x * b[p * n + j];
            }
        }
    }
    c
}

/// The `rows x cols` row-major matrix `x`, transposed.
pub fn transpose(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = x[r * cols + c];
        }
    }
    t
}

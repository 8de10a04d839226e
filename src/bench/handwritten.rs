//! The yardstick for the CPU backend: the same ops written as plain Rust loops (bf16 storage,
//! f32 arithmetic), run over rows on the same thread pool.

use half::bf16;
use rayon::prelude::*;

/// RMSNorm forward over `rows x n`, writing y and rstd.
pub fn rmsnorm_fwd(x: &[bf16], w: &[bf16], y: &mut [bf16], rstd: &mut [f32], n: usize, eps: f32) {
    y.par_chunks_mut(n)
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(n))
        .for_each(|((y, r), x)| {
            let ss: f32 = x.iter().map(|v| v.to_f32() * v.to_f32()).sum();
            let s = 1.0 / (ss / n as f32 + eps).sqrt();
            *r = s;
            for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
                *y = bf16::from_f32(x.to_f32() * s * w.to_f32());
            }
        });
}

/// SwiGLU forward: out = silu(gate) * up, elementwise.
pub fn swiglu_fwd(gate: &[bf16], up: &[bf16], out: &mut [bf16]) {
    out.par_chunks_mut(4096)
        .zip(gate.par_chunks(4096))
        .zip(up.par_chunks(4096))
        .for_each(|((o, g), u)| {
            for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
                let g = g.to_f32();
                *o = bf16::from_f32(g / (1.0 + (-g).exp()) * u.to_f32());
            }
        });
}

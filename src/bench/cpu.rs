//! Kiln kernels on the Cranelift backend against hand-written Rust loops, on this machine's
//! cores, at the Qwen2.5-0.5B shapes. Reports medians over repeated runs.

use super::handwritten;
use half::bf16;
use kiln::compiler::Source;
use kiln::runtime::{Args, Device, KernelCache, KernelSpec};
use std::time::Instant;

fn median_ms<E: ToString>(
    runs: usize,
    mut f: impl FnMut() -> Result<(), E>,
) -> Result<f64, String> {
    f().map_err(|e| e.to_string())?; // warm-up (and JIT compile)
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let s = Instant::now();
        f().map_err(|e| e.to_string())?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(|a, b| a.total_cmp(b));
    Ok(t[runs / 2])
}

fn data(n: usize, seed: u32) -> Vec<bf16> {
    (0..n)
        .map(|i| {
            bf16::from_f32(
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 1000.0
                    - 1.0
                    + 1e-3,
            )
        })
        .collect()
}

/// Runs the benchmark and returns a short table.
pub fn run(runs: usize) -> Result<String, String> {
    let dev = Device::cpu();
    let cache = KernelCache::in_memory();
    let e = |e: kiln::runtime::Error| e.to_string();
    let mut out = String::from("| op | shape | Kiln (Cranelift) ms | hand-written Rust ms | ratio |\n|---|---|---|---|---|\n");

    // RMSNorm forward, 8192 x 896.
    let (rows, n) = (8192usize, 896usize);
    let (x, w) = (data(rows * n, 1), data(n, 2));
    let (xb, wb) = (dev.upload(&x).map_err(e)?, dev.upload(&w).map_err(e)?);
    let mut yb = dev
        .alloc(kiln::compiler::DType::Bf16, rows * n)
        .map_err(e)?;
    let mut rb = dev.alloc(kiln::compiler::DType::F32, rows).map_err(e)?;
    let f = kiln::ops::kernels::file("rmsnorm.kiln").ok_or("rmsnorm.kiln missing")?;
    let src = Source::new(f.name, f.source);
    let spec = KernelSpec::new(&src, "rmsnorm_fwd").define("BLOCK", 1024);
    let args = Args::new()
        .input("x", &xb)
        .input("w", &wb)
        .output("y", &mut yb)
        .output("rstd", &mut rb)
        .i32("n", n as i32)
        .f32("eps", 1e-6);
    let kiln_ms = median_ms(runs, || {
        cache.launch(&dev, &spec, [rows as u32, 1, 1], &args)
    })?;
    let (mut y, mut r) = (vec![bf16::ZERO; rows * n], vec![0f32; rows]);
    let hand_ms = median_ms(runs, || {
        handwritten::rmsnorm_fwd(&x, &w, &mut y, &mut r, n, 1e-6);
        Ok::<(), String>(())
    })?;
    out += &format!(
        "| rmsnorm fwd | {rows} x {n} bf16 | {kiln_ms:.2} | {hand_ms:.2} | {:.2}x |\n",
        kiln_ms / hand_ms
    );

    // SwiGLU forward, 8192 x 4864.
    let len = 8192usize * 4864;
    let (g, u) = (data(len, 3), data(len, 4));
    let (gb, ub) = (dev.upload(&g).map_err(e)?, dev.upload(&u).map_err(e)?);
    let mut ob = dev.alloc(kiln::compiler::DType::Bf16, len).map_err(e)?;
    let f = kiln::ops::kernels::file("swiglu.kiln").ok_or("swiglu.kiln missing")?;
    let src = Source::new(f.name, f.source);
    let spec = KernelSpec::new(&src, "swiglu_fwd");
    let args = Args::new()
        .input("gate", &gb)
        .input("up", &ub)
        .output("out", &mut ob)
        .i64("n", len as i64);
    let kiln_ms = median_ms(runs, || {
        cache.launch(&dev, &spec, [len.div_ceil(1024) as u32, 1, 1], &args)
    })?;
    let mut o = vec![bf16::ZERO; len];
    let hand_ms = median_ms(runs, || {
        handwritten::swiglu_fwd(&g, &u, &mut o);
        Ok::<(), String>(())
    })?;
    out += &format!(
        "| swiglu fwd | 8192 x 4864 bf16 | {kiln_ms:.2} | {hand_ms:.2} | {:.2}x |\n",
        kiln_ms / hand_ms
    );
    Ok(out)
}

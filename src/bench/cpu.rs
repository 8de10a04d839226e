//! Kiln kernels on the Cranelift backend against hand-written Rust loops, on this machine's
//! cores, at the Qwen2.5-0.5B shapes. Reports medians over repeated runs.

use super::handwritten;
use half::bf16;
use kiln::compiler::Source;
use kiln::runtime::{Args, BoundsChecks, Device, KernelCache, KernelSpec};
use std::time::Instant;

/// The median milliseconds of each of `fs`, run in turn `runs` times (after one warm-up round
/// that also compiles), so that a drift in the machine's speed affects them alike.
fn medians<const N: usize>(
    runs: usize,
    mut fs: [&mut dyn FnMut() -> Result<(), String>; N],
) -> Result<[f64; N], String> {
    for f in fs.iter_mut() {
        f()?;
    }
    let mut times = [(); N].map(|_| Vec::with_capacity(runs));
    for _ in 0..runs {
        for (f, t) in fs.iter_mut().zip(&mut times) {
            let s = Instant::now();
            f()?;
            t.push(s.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(times.map(|mut t| {
        t.sort_by(|a, b| a.total_cmp(b));
        t[runs / 2]
    }))
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
    let mut out = String::from(
        "| op | shape | Kiln (Cranelift) ms | hand-written Rust ms | ratio | Kiln without bounds checks ms | cost of the checks |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let row = |op: &str, shape: &str, [kiln, hand, unchecked]: [f64; 3]| {
        format!(
            "| {op} | {shape} | {kiln:.2} | {hand:.2} | {:.2}x | {unchecked:.2} | {:+.0}% |\n",
            kiln / hand,
            (kiln / unchecked - 1.0) * 100.0
        )
    };

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
    let grid = [rows as u32, 1, 1];
    let checked = cache.kernel(&dev, &spec, &Default::default()).map_err(e)?;
    let unchecked = unchecked_kernel(&cache, &dev, &spec)?;
    let (mut y, mut r) = (vec![bf16::ZERO; rows * n], vec![0f32; rows]);
    let times = medians(
        runs,
        [
            &mut || checked.launch(grid, &args).map_err(e),
            &mut || {
                handwritten::rmsnorm_fwd(&x, &w, &mut y, &mut r, n, 1e-6);
                Ok(())
            },
            // SAFETY: the kernel is the checked one's twin, which stays inside these buffers
            // (its masks keep every access below n per row).
            &mut || unsafe { unchecked.launch_unchecked(grid, &args) }.map_err(e),
        ],
    )?;
    out += &row("rmsnorm fwd", &format!("{rows} x {n} bf16"), times);

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
    let grid = [len.div_ceil(1024) as u32, 1, 1];
    let checked = cache.kernel(&dev, &spec, &Default::default()).map_err(e)?;
    let unchecked = unchecked_kernel(&cache, &dev, &spec)?;
    let mut o = vec![bf16::ZERO; len];
    let times = medians(
        runs,
        [
            &mut || checked.launch(grid, &args).map_err(e),
            &mut || {
                handwritten::swiglu_fwd(&g, &u, &mut o);
                Ok(())
            },
            // SAFETY: as above: the masks keep every access below n, the buffers' length.
            &mut || unsafe { unchecked.launch_unchecked(grid, &args) }.map_err(e),
        ],
    )?;
    out += &row("swiglu fwd", "8192 x 4864 bf16", times);
    out += &launch_overhead(&cache, &dev)?;
    Ok(out)
}

/// The kernel of `spec` compiled without bounds checks.
fn unchecked_kernel(
    cache: &KernelCache,
    dev: &Device,
    spec: &KernelSpec<'_>,
) -> Result<std::sync::Arc<kiln::runtime::Kernel>, String> {
    let spec = spec.clone().with_bounds_checks(BoundsChecks::Off);
    cache
        .kernel(dev, &spec, &Default::default())
        .map_err(|e| e.to_string())
}

/// A row for the cost of one launch of a one-program kernel (256 elements), with its arguments
/// bound by name, checked and unchecked.
fn launch_overhead(cache: &KernelCache, dev: &Device) -> Result<String, String> {
    let e = |e: kiln::runtime::Error| e.to_string();
    let src = Source::new(
        "scale.kiln",
        "kernel scale(x: *f32, y: *mut f32, n: i32, alpha: f32) {
            let offs = range(256);
            let m = offs < n;
            store(y + offs, load(x + offs, mask: m, other: 0.0) * alpha, mask: m);
        }",
    );
    let spec = KernelSpec::new(&src, "scale");
    let x = dev.upload(&[1.0f32; 256]).map_err(e)?;
    // Both timed closures launch into `y`, one at a time.
    let y = std::cell::RefCell::new(dev.alloc(kiln::compiler::DType::F32, 256).map_err(e)?);
    let checked = cache.kernel(dev, &spec, &Default::default()).map_err(e)?;
    let unchecked = unchecked_kernel(cache, dev, &spec)?;
    const LAUNCHES: usize = 1000;
    let launches = |unsafe_unchecked: bool| -> Result<(), String> {
        let mut y = y.borrow_mut();
        for _ in 0..LAUNCHES {
            let args = Args::new()
                .input("x", &x)
                .output("y", &mut *y)
                .i32("n", 256)
                .f32("alpha", 3.0);
            if unsafe_unchecked {
                // SAFETY: the mask keeps every access below 256, the buffers' length.
                unsafe { unchecked.launch_unchecked([1, 1, 1], &args) }.map_err(e)?;
            } else {
                checked.launch([1, 1, 1], &args).map_err(e)?;
            }
        }
        Ok(())
    };
    let [kiln, unchecked] = {
        let mut one = || launches(false);
        let mut two = || launches(true);
        medians(25, [&mut one, &mut two])?
    };
    let us = |ms: f64| ms * 1e3 / LAUNCHES as f64;
    Ok(format!(
        "| one launch (args bound by name) | 1 program, 256 f32 | {:.2} us | — | — | {:.2} us | {:+.0}% |\n",
        us(kiln),
        us(unchecked),
        (kiln / unchecked - 1.0) * 100.0
    ))
}

//! `kiln bench gemm`: TFLOP/s of the Kiln GEMM (`ops/kernels/gemm.kiln`, bf16 in, f32
//! accumulation on tensor cores, bf16 out) at the shapes of the issue, against cuBLAS.
//!
//! Each configuration (tile sizes, warps and loop-pipeline stages) is timed with CUDA events (median of `runs`) on
//! one set of inputs, after a spot check of its result against an f64 reference on sampled
//! elements, so a fast wrong kernel cannot win.

use super::gpu::{err, median_ms, output, rand_bf16, KernelChoice};
use half::bf16;
use kiln::compiler::DType;
use kiln::runtime::{Args, Buffer, Device, KernelCache};

/// `(m, k, n)` and cuBLAS's TFLOP/s on the H200 for it (measured by the author).
const SHAPES: &[(usize, usize, usize, f64)] = &[(8192, 896, 4864, 579.0), (8192, 4864, 896, 616.0)];

/// `(BM, BN, BK, warps, stages)`; the first is the kernel's default (no loop pipeline). On
/// sm_90a, tiles with 16 rows per warp in whole warpgroups run on `wgmma` (`BM = 16 x warps`),
/// the others on `mma.sync`. `compiler/tests/compiler/nvptx_dot.rs` checks that each
/// assembles without spills.
const CONFIGS: &[(i64, i64, i64, u32, u32)] = &[
    (128, 128, 32, 4, 1),
    (128, 128, 32, 4, 4),
    (128, 256, 64, 8, 3),
    (128, 128, 64, 8, 3),
    (128, 128, 64, 8, 4),
    (128, 128, 32, 8, 4),
    (128, 256, 64, 8, 4),
    (128, 256, 32, 8, 4),
    (128, 256, 32, 8, 6),
    (128, 128, 64, 8, 5),
    (128, 128, 64, 8, 6),
    (64, 256, 64, 4, 4),
    (64, 128, 64, 4, 4),
];

/// Elements of `c` compared with the reference per configuration.
const SAMPLES: usize = 256;

/// Runs the suite on CUDA device 0 and returns the table (and the per-configuration log).
pub fn run(runs: usize) -> Result<String, String> {
    let dev = Device::cuda(0).map_err(err)?;
    let cache = KernelCache::in_memory();
    let mut log = vec![];
    let mut rows = vec![];
    for &(m, k, n, cublas) in SHAPES {
        let a = rand_bf16(&dev, m * k, 1, 1.0)?;
        let b = rand_bf16(&dev, k * n, 2, 1.0)?;
        let mut c = output(&dev, DType::Bf16, m * n)?;
        let check = SpotCheck::new(&a, &b, m, k, n)?;
        // The arguments borrow `c`: built for each use, so that `c` can be checked in between.
        let shape = (m, k, n);
        let mut best: Option<(String, f64)> = None;
        for &(bm, bn, bk, warps, stages) in CONFIGS {
            let choice = KernelChoice::new("gemm.kiln", "gemm", warps)
                .int("BM", bm)
                .int("BN", bn)
                .int("BK", bk)
                .stages(stages);
            let config = choice.describe();
            let kernel = match choice.load(&cache, &dev, &gemm_args(&a, &b, &mut c, shape)) {
                Ok(kernel) => kernel,
                Err(e) => {
                    log.push(format!("{m}x{k}x{n} [{config}]: not compiled: {e}"));
                    continue;
                }
            };
            let grid = [
                (m.div_ceil(bm as usize) * n.div_ceil(bn as usize)) as u32,
                1,
                1,
            ];
            kernel
                .launch(grid, &gemm_args(&a, &b, &mut c, shape))
                .map_err(err)?;
            dev.synchronize().map_err(err)?;
            if let Err(e) = check.verify(&c) {
                log.push(format!("{m}x{k}x{n} [{config}]: WRONG RESULT: {e}"));
                continue;
            }
            let args = gemm_args(&a, &b, &mut c, shape);
            let ms = median_ms(&dev, runs, |_| kernel.launch(grid, &args).map_err(err))?;
            let tflops = tflops(m, k, n, ms);
            log.push(format!(
                "{m}x{k}x{n} [{config}]: {ms:.4} ms, {tflops:.1} TFLOP/s, {:.0}% of cuBLAS",
                100.0 * tflops / cublas
            ));
            if best.as_ref().is_none_or(|(_, t)| tflops > *t) {
                best = Some((config, tflops));
            }
        }
        rows.push((m, k, n, cublas, best));
    }
    let mut out = log.join("\n");
    out += &format!(
        "\n\n{} ({dev}); medians of {runs} runs, CUDA events; TFLOP/s = 2 m n k / time\n",
        dev.name()
    );
    out += "| m x k x n | best config | TFLOP/s | cuBLAS | % of cuBLAS |\n|---|---|---|---|---|\n";
    for (m, k, n, cublas, best) in rows {
        let (config, t) = best.unwrap_or_else(|| ("none ran".to_string(), 0.0));
        out += &format!(
            "| {m} x {k} x {n} | {config} | {t:.1} | {cublas:.0} | {:.0}% |\n",
            100.0 * t / cublas
        );
    }
    Ok(out)
}

/// The arguments of `c[m, n] = a[m, k] @ b[k, n]`.
fn gemm_args<'a>(
    a: &'a Buffer,
    b: &'a Buffer,
    c: &'a mut Buffer,
    (m, k, n): (usize, usize, usize),
) -> Args<'a> {
    Args::new()
        .input("a", a)
        .input("b", b)
        .output("c", c)
        .i32("m", m as i32)
        .i32("n", n as i32)
        .i32("k", k as i32)
}

fn tflops(m: usize, k: usize, n: usize, ms: f64) -> f64 {
    2.0 * m as f64 * k as f64 * n as f64 / (ms / 1e3) / 1e12
}

/// Reference values of sampled elements of `a @ b`, from the inputs read back once.
struct SpotCheck {
    /// `(row, col, value)`.
    samples: Vec<(usize, usize, f64)>,
    n: usize,
}

impl SpotCheck {
    fn new(a: &Buffer, b: &Buffer, m: usize, k: usize, n: usize) -> Result<SpotCheck, String> {
        let a: Vec<bf16> = a.download().map_err(err)?;
        let b: Vec<bf16> = b.download().map_err(err)?;
        // Spread over the whole output, edges included.
        let samples = (0..SAMPLES)
            .map(|s| {
                let (row, col) = ((s * 7919 + s / 3) % m, (s * 104_729 + 13) % n);
                let row = if s == 0 { m - 1 } else { row };
                let col = if s == 1 { n - 1 } else { col };
                let v = (0..k)
                    .map(|p| a[row * k + p].to_f64() * b[p * n + col].to_f64())
                    .sum();
                (row, col, v)
            })
            .collect();
        Ok(SpotCheck { samples, n })
    }

    /// Each sample within bf16 rounding of the reference.
    fn verify(&self, c: &Buffer) -> Result<(), String> {
        let c: Vec<bf16> = c.download().map_err(err)?;
        for &(row, col, want) in &self.samples {
            let got = c[row * self.n + col].to_f64();
            if (got - want).abs() > 1e-2 + 1e-2 * want.abs() {
                return Err(format!("c[{row}, {col}] = {got}, expected {want}"));
            }
        }
        Ok(())
    }
}

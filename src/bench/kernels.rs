//! `kiln bench kernels`: achieved bandwidth of the memory-bound kernels on a GPU.
//!
//! For each op and shape, every candidate configuration (block size, warps, rows per program)
//! is timed and the fastest is reported with the bytes that must move divided by its median
//! time, against the measured copy ceiling. Inputs rotate through enough copies to exceed
//! L2, so no run finds its data there; a second column gives the time with one set of inputs
//! (as the peer scripts measure, L2-warm where the data fits).

use super::gpu::{self, err, median_ms, output, rand_bf16, rand_f32, rotation, KernelChoice};
use kiln::compiler::DType;
use kiln::runtime::{Args, Buffer, Device, Kernel, KernelCache};
use std::sync::Arc;

/// One measured op: its fastest configuration and times.
struct Row {
    op: String,
    shape: String,
    config: String,
    bytes: usize,
    rotated_ms: f64,
    hot_ms: f64,
}

struct Bench {
    dev: Device,
    cache: KernelCache,
    runs: usize,
    rows: Vec<Row>,
    log: Vec<String>,
}

/// Runs the suite on CUDA device 0 and returns the table (and the per-configuration log).
pub fn run(runs: usize) -> Result<String, String> {
    let dev = Device::cuda(0).map_err(err)?;
    let mut b = Bench {
        cache: KernelCache::in_memory(),
        dev,
        runs,
        rows: vec![],
        log: vec![],
    };
    for (rows, n) in [(8192, 896), (8192, 4864), (16384, 4096)] {
        b.rmsnorm_fwd(rows, n)?;
        b.rmsnorm_bwd(rows, n)?;
        b.swiglu(rows * n, false)?;
        b.swiglu(rows * n, true)?;
        b.adamw(rows * n)?;
    }
    b.adamw(494_032_768)?;
    for (tokens, hq, hk, d) in [(8192, 14, 2, 64), (16384, 32, 8, 128)] {
        b.rope(tokens, hq, hk, d, false)?;
        b.rope(tokens, hq, hk, d, true)?;
    }
    Ok(b.table())
}

impl Bench {
    /// Times each candidate (`launch(candidate_index, set)` queues one run on input set `set`)
    /// and records the fastest.
    fn sweep(
        &mut self,
        op: &str,
        shape: String,
        bytes: usize,
        configs: &[String],
        sets: usize,
        mut launch: impl FnMut(usize, usize) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut best: Option<Row> = None;
        for (c, config) in configs.iter().enumerate() {
            let rotated_ms = median_ms(&self.dev, self.runs, |i| launch(c, i % sets))?;
            let hot_ms = median_ms(&self.dev, self.runs, |_| launch(c, 0))?;
            self.log.push(format!(
                "{op} {shape} [{config}]: {rotated_ms:.4} ms rotated, {hot_ms:.4} ms hot, {:.0} GB/s",
                gbps(bytes, rotated_ms)
            ));
            if best.as_ref().is_none_or(|b| rotated_ms < b.rotated_ms) {
                best = Some(Row {
                    op: op.to_string(),
                    shape: shape.clone(),
                    config: config.clone(),
                    bytes,
                    rotated_ms,
                    hot_ms,
                });
            }
        }
        self.rows.extend(best);
        Ok(())
    }

    fn load(&self, choice: &KernelChoice, args: &Args<'_>) -> Result<Arc<Kernel>, String> {
        choice.load(&self.cache, &self.dev, args)
    }

    /// Enough sets of a kernel's buffers (`make(seed)`) to rotate through more than L2.
    fn sets<const N: usize>(
        &self,
        bytes: usize,
        make: impl Fn(u64) -> Result<[Buffer; N], String>,
    ) -> Result<Vec<[Buffer; N]>, String> {
        (0..rotation(bytes)).map(|s| make(s as u64 * 16)).collect()
    }

    fn rmsnorm_fwd(&mut self, rows: usize, n: usize) -> Result<(), String> {
        let bytes = 2 * rows * n * 2 + n * 2 + rows * 4;
        let dev = self.dev.clone();
        let mut sets = self.sets(bytes, |s| {
            Ok([
                rand_bf16(&dev, rows * n, s, 2.0)?,
                rand_bf16(&dev, n, s + 1, 1.0)?,
                output(&dev, DType::Bf16, rows * n)?,
                output(&dev, DType::F32, rows)?,
            ])
        })?;
        let args = arg_list(&sets, |[x, w, y, rstd]| {
            Args::new()
                .input("x", x)
                .input("w", w)
                .output("y", y)
                .output("rstd", rstd)
                .i32("n", n as i32)
                .f32("eps", 1e-6)
        });
        let block = n.next_power_of_two() as i64;
        let choices: Vec<KernelChoice> = [1, 2, 4, 8, 16]
            .into_iter()
            .filter(|w| block >= 32 * *w as i64)
            .map(|w| KernelChoice::new("rmsnorm.kiln", "rmsnorm_fwd", w).int("BLOCK", block))
            .collect();
        let kernels: Vec<_> = choices
            .iter()
            .map(|c| self.load(c, &args(&mut sets[0])))
            .collect::<Result<_, _>>()?;
        let configs: Vec<String> = choices.iter().map(KernelChoice::describe).collect();
        let grid = [rows as u32, 1, 1];
        let count = sets.len();
        self.sweep(
            "rmsnorm fwd",
            format!("{rows} x {n}"),
            bytes,
            &configs,
            count,
            |c, s| kernels[c].launch(grid, &args(&mut sets[s])).map_err(err),
        )
    }

    fn rmsnorm_bwd(&mut self, rows: usize, n: usize) -> Result<(), String> {
        let bytes = 3 * rows * n * 2 + 2 * n * 2 + rows * 4;
        let block = n.next_power_of_two() as i64;
        let mut candidates = vec![];
        for rows_per_program in [8usize, 16, 32, 64] {
            for w in [4u32, 8, 16] {
                if block >= 32 * w as i64 {
                    candidates.push((rows_per_program, w));
                }
            }
        }
        let max_partials = rows.div_ceil(8) * n;
        let dev = self.dev.clone();
        let mut sets = self.sets(bytes, |s| {
            Ok([
                rand_bf16(&dev, rows * n, s, 2.0)?,
                rand_bf16(&dev, n, s + 1, 1.0)?,
                rand_bf16(&dev, rows * n, s + 2, 1.0)?,
                rand_f32(&dev, rows, s + 3, 1.0, true)?,
                output(&dev, DType::Bf16, rows * n)?,
                output(&dev, DType::F32, max_partials)?,
                output(&dev, DType::F32, n)?,
            ])
        })?;
        // The last buffer, dw, belongs to the reduction.
        let bwd_args = arg_list(&sets, |[x, w, dy, rstd, dx, partial, _]| {
            Args::new()
                .input("x", x)
                .input("w", w)
                .input("dy", dy)
                .input("rstd", rstd)
                .output("dx", dx)
                .output("dw_partial", partial)
                .i32("n_rows", rows as i32)
                .i32("n", n as i32)
        });
        fn reduce_args(set: &mut [Buffer; 7], partials: usize, n: usize) -> Args<'_> {
            let [.., partial, dw] = set;
            Args::new()
                .input("dw_partial", partial)
                .in_out("dw", dw)
                .i32("n_partial", partials as i32)
                .i32("n", n as i32)
        }
        let reduce_block = 64i64;
        let reduce = self.load(
            &KernelChoice::new("rmsnorm.kiln", "rmsnorm_dw_reduce", 4).int("BLOCK", reduce_block),
            &reduce_args(&mut sets[0], 1, n),
        )?;
        let mut kernels = vec![];
        let mut configs = vec![];
        for &(rows_per_program, w) in &candidates {
            let choice = KernelChoice::new("rmsnorm.kiln", "rmsnorm_bwd", w)
                .int("BLOCK", block)
                .int("ROWS", rows_per_program as i64);
            kernels.push(self.load(&choice, &bwd_args(&mut sets[0]))?);
            configs.push(choice.describe());
        }
        let reduce_grid = [n.div_ceil(reduce_block as usize) as u32, 1, 1];
        let count = sets.len();
        self.sweep(
            "rmsnorm bwd",
            format!("{rows} x {n}"),
            bytes,
            &configs,
            count,
            |c, s| {
                let partials = rows.div_ceil(candidates[c].0);
                kernels[c]
                    .launch([partials as u32, 1, 1], &bwd_args(&mut sets[s]))
                    .map_err(err)?;
                reduce
                    .launch(reduce_grid, &reduce_args(&mut sets[s], partials, n))
                    .map_err(err)
            },
        )
    }

    fn swiglu(&mut self, len: usize, backward: bool) -> Result<(), String> {
        let dev = self.dev.clone();
        let input = |seed| rand_bf16(&dev, len, seed, 3.0);
        let out = || output(&dev, DType::Bf16, len);
        if backward {
            let bytes = 5 * len * 2;
            let mut sets = self.sets(bytes, |s| {
                Ok([input(s)?, input(s + 1)?, input(s + 2)?, out()?, out()?])
            })?;
            let args = arg_list(&sets, |[gate, up, dout, dgate, dup]| {
                Args::new()
                    .input("gate", gate)
                    .input("up", up)
                    .input("dout", dout)
                    .output("dgate", dgate)
                    .output("dup", dup)
                    .i64("n", len as i64)
            });
            let (file, kernel) = ("swiglu.kiln", "swiglu_bwd");
            self.elementwise("swiglu bwd", file, kernel, len, bytes, &mut sets, args)
        } else {
            let bytes = 3 * len * 2;
            let mut sets = self.sets(bytes, |s| Ok([input(s)?, input(s + 1)?, out()?]))?;
            let args = arg_list(&sets, |[gate, up, out]| {
                Args::new()
                    .input("gate", gate)
                    .input("up", up)
                    .output("out", out)
                    .i64("n", len as i64)
            });
            let (file, kernel) = ("swiglu.kiln", "swiglu_fwd");
            self.elementwise("swiglu fwd", file, kernel, len, bytes, &mut sets, args)
        }
    }

    fn adamw(&mut self, len: usize) -> Result<(), String> {
        let bytes = 30 * len + 4;
        let dev = self.dev.clone();
        let mut sets = self.sets(bytes, |s| {
            Ok([
                rand_f32(&dev, len, s, 1.0, false)?,
                rand_f32(&dev, len, s + 1, 1e-2, false)?,
                rand_f32(&dev, len, s + 2, 1e-3, false)?,
                rand_f32(&dev, len, s + 3, 1e-5, true)?,
                output(&dev, DType::Bf16, len)?,
                dev.upload(&[0.5f32]).map_err(err)?,
            ])
        })?;
        let args = arg_list(&sets, |[param, grad, m, v, param_bf16, scale]| {
            Args::new()
                .in_out("param", param)
                .input("grad", grad)
                .in_out("exp_avg", m)
                .in_out("exp_avg_sq", v)
                .output("param_copy", param_bf16)
                .input("grad_scale", scale)
                .i64("n", len as i64)
                .f32("decay", 1.0 - 1e-7)
                .f32("step_size", 1e-4)
                .f32("beta1", 0.9)
                .f32("beta2", 0.999)
                .f32("bias2_sqrt", 0.0316)
                .f32("eps", 1e-8)
        });
        self.elementwise("adamw", "adamw.kiln", "adamw", len, bytes, &mut sets, args)
    }

    /// A kernel with one program per BLOCK elements, swept over block sizes and warps.
    #[allow(clippy::too_many_arguments)]
    fn elementwise<const N: usize>(
        &mut self,
        op: &str,
        file: &'static str,
        kernel: &'static str,
        len: usize,
        bytes: usize,
        sets: &mut [[Buffer; N]],
        args: impl for<'a> Fn(&'a mut [Buffer; N]) -> Args<'a>,
    ) -> Result<(), String> {
        let mut blocks = vec![];
        let mut kernels = vec![];
        let mut configs = vec![];
        for block in [1024i64, 2048, 4096] {
            for w in [4u32, 8] {
                let choice = KernelChoice::new(file, kernel, w).int("BLOCK", block);
                kernels.push(self.load(&choice, &args(&mut sets[0]))?);
                configs.push(choice.describe());
                blocks.push(block as usize);
            }
        }
        let count = sets.len();
        self.sweep(
            op,
            format!("{len} elements"),
            bytes,
            &configs,
            count,
            |c, s| {
                let grid = [len.div_ceil(blocks[c]) as u32, 1, 1];
                kernels[c].launch(grid, &args(&mut sets[s])).map_err(err)
            },
        )
    }

    fn rope(
        &mut self,
        tokens: usize,
        hq: usize,
        hk: usize,
        d: usize,
        backward: bool,
    ) -> Result<(), String> {
        let bytes = 2 * tokens * (hq + hk) * d * 2 + tokens * 4;
        let dev = self.dev.clone();
        let positions: Vec<i32> = (0..tokens).map(|t| (t % 1024) as i32).collect();
        let mut sets = self.sets(bytes, |s| {
            Ok([
                rand_bf16(&dev, tokens * hq * d, s, 1.0)?,
                rand_bf16(&dev, tokens * hk * d, s + 1, 1.0)?,
                dev.upload(&positions).map_err(err)?,
            ])
        })?;
        let args = arg_list(&sets, |[q, k, positions]| {
            Args::new()
                .in_out("q", q)
                .in_out("k", k)
                .input("positions", positions)
                .i32("n_q_heads", hq as i32)
                .i32("n_kv_heads", hk as i32)
                .i32("half_dim", (d / 2) as i32)
                .f32("theta", 1e6)
        });
        let mut kernels = vec![];
        let mut configs = vec![];
        for w in [1u32, 2, 4, 8] {
            let choice = KernelChoice::new("rope.kiln", "rope", w)
                .int("QHEADS", hq.next_power_of_two() as i64)
                .int("KHEADS", hk.next_power_of_two() as i64)
                .int("HALF", (d / 2) as i64)
                .flag("BACKWARD", backward);
            kernels.push(self.load(&choice, &args(&mut sets[0]))?);
            configs.push(choice.describe());
        }
        let grid = [tokens as u32, 1, 1];
        let count = sets.len();
        self.sweep(
            if backward { "rope bwd" } else { "rope fwd" },
            format!("{tokens} tokens, {hq}/{hk} heads, dim {d}"),
            bytes,
            &configs,
            count,
            |c, s| kernels[c].launch(grid, &args(&mut sets[s])).map_err(err),
        )
    }

    fn table(&self) -> String {
        let mut out = String::new();
        for line in &self.log {
            out += line;
            out.push('\n');
        }
        out += &format!(
            "\n{} ({}); medians of {} runs, CUDA events; bytes = inputs read + outputs written once\n",
            self.dev.name(),
            self.dev,
            self.runs
        );
        out += "| op | shape | best config | ms (rotated) | GB/s | % of 4,172 | ms (hot) |\n";
        out += "|---|---|---|---|---|---|---|\n";
        for r in &self.rows {
            let g = gbps(r.bytes, r.rotated_ms);
            out += &format!(
                "| {} | {} | {} | {:.4} | {:.0} | {:.0}% | {:.4} |\n",
                r.op,
                r.shape,
                r.config,
                r.rotated_ms,
                g,
                100.0 * g / gpu::COPY_CEILING_GBPS,
                r.hot_ms
            );
        }
        out
    }
}

/// Pins a closure's signature so the arguments borrow from the set of buffers passed in (the
/// sets fix the number of buffers).
fn arg_list<const N: usize, F>(_sets: &[[Buffer; N]], f: F) -> F
where
    F: for<'a> Fn(&'a mut [Buffer; N]) -> Args<'a>,
{
    f
}

fn gbps(bytes: usize, ms: f64) -> f64 {
    bytes as f64 / (ms / 1e3) / 1e9
}

//! The `kiln` command line: compile kernels and dump any stage of the pipeline.

use clap::{Parser, Subcommand, ValueEnum};
use kiln::compiler::{self, Defines, Source};
use std::process::ExitCode;

mod bench;
mod commands;
mod config;
mod plot;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Kiln: a tile kernel language and JIT compiler"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile a .kiln file and print one stage of the pipeline.
    Compile {
        /// The kernel source file.
        file: std::path::PathBuf,
        /// Which stage to print.
        #[arg(long, value_enum, default_value_t = Emit::Ir)]
        emit: Emit,
        /// Set a compile-time constant or a type parameter: `-D BLOCK=1024`, `-D T=f32`.
        #[arg(short = 'D', value_name = "NAME=VALUE")]
        define: Vec<String>,
        /// Only this kernel of the file.
        #[arg(long)]
        kernel: Option<String>,
        /// Print the IR as the checker produced it, before any pass.
        #[arg(long)]
        no_passes: bool,
        /// Print the IR after each pass of the pass list (widen_offsets, cse, dce) to stderr,
        /// starting with the checker's, each headed by `; after NAME`.
        #[arg(long)]
        print_after_all: bool,
        /// Say on stderr which optimisations the GPU options ask for do not apply, and why
        /// (`--num-stages`, `--aligned`, `wgmma` on sm_90a); `--emit layouts` shows them inline.
        #[arg(short, long)]
        verbose: bool,
        /// GPU target for `--emit layouts|llvm|ptx`: sm_80, sm_90 or sm_90a (H100/H200, with
        /// `wgmma`).
        #[arg(long, default_value = "sm_90")]
        arch: String,
        /// Warps per program for `--emit layouts|llvm|ptx`.
        #[arg(long, default_value_t = 4)]
        num_warps: u32,
        /// For `--emit layouts|llvm|ptx`: stages of the software pipeline of loops that load tiles for
        /// tensor-core dots (1: no pipelining).
        #[arg(long, default_value_t = 1)]
        num_stages: u32,
        /// For `--emit layouts|llvm|ptx`: compile as a launch whose pointers are all 16-byte aligned
        /// and whose integer parameters named here are multiples of 16 (`--aligned n,vocab`),
        /// the specialisation that enables 16-byte vector loads and stores.
        #[arg(long, value_name = "INT_PARAMS", num_args = 0..=1, default_missing_value = "")]
        aligned: Option<String>,
    },
    /// The mean loss and perplexity of a model over a JSONL file (packed, real tokens only).
    Eval(commands::eval::EvalArgs),
    /// Text from a model, greedy or sampled, with a KV cache (`--chat`: the chat template).
    Generate(commands::generate::GenerateArgs),
    /// Write a model (optionally with a LoRA adapter merged) as a Hugging Face folder and/or
    /// a GGUF file for llama.cpp.
    Export(commands::export::ExportArgs),
    /// Fine-tune a model (full or LoRA/LoRA+) on a JSONL file, with checkpoints and metrics.
    Train(Box<commands::train::TrainArgs>),
    /// A model's architecture, parameters, and the memory a full or LoRA fine-tune needs.
    Info(commands::info::InfoArgs),
    /// Draw a run's loss curve (train and eval loss, learning rate) from its metrics.jsonl.
    Plot {
        /// A metrics.jsonl written by `kiln train`.
        metrics: std::path::PathBuf,
        /// The PNG to write (default: loss.png next to the metrics).
        #[arg(short, long)]
        output: Option<std::path::PathBuf>,
    },
    /// A base model and its fine-tune side by side on held-out prompts: exact match of greedy
    /// answers, and example generations.
    Compare(commands::compare::CompareArgs),
    /// Import a GGUF model (Llama or Qwen2) as a Hugging Face folder with f32 weights.
    Import {
        /// The .gguf file.
        file: std::path::PathBuf,
        /// The folder to write (replaced only if empty or an earlier import).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// List the devices Kiln can run kernels on (and why there is no GPU, if there is none).
    Devices,
    /// Measure kernels and training against yardsticks and print a table.
    Bench {
        #[command(subcommand)]
        suite: BenchSuite,
    },
}

/// Timed runs per measurement (the median is reported).
#[derive(clap::Args, Clone, Copy)]
struct Runs {
    #[arg(long, default_value_t = 15)]
    runs: usize,
}

#[derive(Subcommand)]
enum BenchSuite {
    /// Kiln on the CPU (Cranelift) against hand-written Rust loops.
    Cpu(Runs),
    /// Achieved GB/s of the memory-bound kernels on CUDA device 0.
    Kernels(Runs),
    /// JIT latency on CUDA device 0: every shipped kernel, cold and from the disk cache.
    Jit,
    /// The typed operations on CUDA device 0 at the peers' shapes (with `--peer`, beside them).
    Ops {
        #[command(flatten)]
        runs: Runs,
        /// The JSON lines `kernels_peer.py` printed, to show side by side.
        #[arg(long, value_name = "FILE")]
        peer: Option<std::path::PathBuf>,
    },
    /// TFLOP/s of the Kiln GEMM on CUDA device 0 against cuBLAS, over tile configurations.
    Gemm(Runs),
    /// Training steps per second (LoRA and full fine-tuning) beside Hugging Face transformers
    /// + PEFT on the same machine, in the same command.
    Train(bench::train::TrainBenchArgs),
    /// Tokenizing and packing a large JSONL as `kiln train` does, beside Hugging Face
    /// `tokenizers` from Python on the same file, in the same command.
    Data(bench::data::DataBenchArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    /// The syntax tree.
    Ast,
    /// The tile IR.
    Ir,
    /// The tile IR annotated with the backends' decisions: each tile's GPU layout, the width
    /// of each memory access, `mma.sync`/`wgmma`/FMA for each `dot`, each loop's pipeline,
    /// Cranelift's fusion and four-lane loops, and notes on what does not apply.
    Layouts,
    /// Cranelift IR (the CPU backend).
    Clif,
    /// LLVM IR for NVPTX, after optimisation.
    Llvm,
    /// PTX assembly.
    Ptx,
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let command = Cli::command();
    let train = command
        .find_subcommand("train")
        .expect("kiln has a train command")
        .clone();
    let argv = match config::expand(std::env::args_os().collect(), &train) {
        Ok(argv) => argv,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let matches = command.get_matches_from(argv);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let cli = match (cli, matches.subcommand_matches("train")) {
        (
            Cli {
                command: Command::Train(mut args),
            },
            Some(sub),
        ) => {
            args.effective_config = config::effective(&train, sub);
            Cli {
                command: Command::Train(args),
            }
        }
        (cli, _) => cli,
    };
    match run(cli) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("{}", msg.trim_end());
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<String, String> {
    match cli.command {
        Command::Devices => Ok(devices()),
        Command::Import { file, out } => commands::import::run(&file, &out),
        Command::Eval(args) => commands::eval::run(args),
        Command::Train(args) => commands::train::run(*args),
        Command::Compare(args) => commands::compare::run(args),
        Command::Info(args) => commands::info::run(args),
        Command::Plot { metrics, output } => {
            let out = output.unwrap_or_else(|| metrics.with_file_name("loss.png"));
            plot::draw_metrics(&metrics, &out).map(|()| format!("wrote {}\n", out.display()))
        }
        Command::Generate(args) => commands::generate::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::Bench { suite } => match suite {
            BenchSuite::Cpu(r) => bench::cpu::run(r.runs.max(1)),
            BenchSuite::Kernels(r) => bench::kernels::run(r.runs.max(1)),
            BenchSuite::Ops { runs, peer } => bench::ops::run(runs.runs.max(1), peer.as_deref()),
            BenchSuite::Jit => bench::jit::run(),
            BenchSuite::Gemm(r) => bench::gemm::run(r.runs.max(1)),
            BenchSuite::Train(args) => bench::train::run(args),
            BenchSuite::Data(args) => bench::data::run(args),
        },
        Command::Compile {
            file,
            emit,
            define,
            kernel,
            no_passes,
            print_after_all,
            verbose,
            arch,
            num_warps,
            num_stages,
            aligned,
        } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("error: cannot read {}: {e}", file.display()))?;
            let src = Source::new(file.display().to_string(), text);
            let defines = parse_defines(&define)?;
            if let Emit::Ast = emit {
                let module = compiler::parse(&src).map_err(|e| e.to_string())?;
                return Ok(compiler::syntax::print_module(&module));
            }
            let checked = compiler::check(&src, &defines).map_err(|e| e.to_string())?;
            let checked: Vec<_> = select(&checked, kernel.as_deref())?
                .into_iter()
                .cloned()
                .collect();
            if print_after_all {
                let listing: Vec<String> = checked
                    .iter()
                    .map(compiler::passes::print_after_all)
                    .collect();
                eprint!("{}", listing.join("\n"));
            }
            let mut kernels = checked;
            if !no_passes {
                for k in &mut kernels {
                    compiler::passes::run_all(k);
                }
            }
            let target = GpuTarget {
                arch: &arch,
                num_warps,
                num_stages,
                aligned: aligned.as_deref(),
                verbose,
            };
            match emit {
                Emit::Ast => unreachable!("printed above"),
                Emit::Ir => Ok(kernels
                    .iter()
                    .map(compiler::ir::print_kernel)
                    .collect::<Vec<_>>()
                    .join("\n")),
                Emit::Layouts => {
                    let mut out = vec![];
                    for k in &kernels {
                        out.push(layouts(k, &target)?);
                    }
                    Ok(out.join("\n"))
                }
                Emit::Clif => {
                    let mut out = vec![];
                    for k in &kernels {
                        out.push(
                            compiler::backend::cranelift::emit_clif(k, Default::default())
                                .map_err(|e| format!("error: {e}"))?,
                        );
                    }
                    Ok(out.join("\n"))
                }
                Emit::Llvm | Emit::Ptx => gpu_text(&kernels, emit, &target),
            }
        }
    }
}

/// What `kiln compile` compiles for on a GPU.
struct GpuTarget<'a> {
    arch: &'a str,
    num_warps: u32,
    num_stages: u32,
    /// `--aligned`'s integer parameters (`Some("")`: pointers only).
    aligned: Option<&'a str>,
    verbose: bool,
}

#[cfg(feature = "cuda")]
impl GpuTarget<'_> {
    /// The options kernel `k` is compiled with.
    fn options(
        &self,
        k: &compiler::ir::Kernel,
    ) -> Result<compiler::backend::nvptx::PtxOptions, String> {
        use compiler::backend::nvptx::{Arch, PtxOptions};
        let arch = Arch::from_name(self.arch).ok_or_else(|| {
            format!(
                "error: unknown --arch `{}` (sm_80, sm_90 or sm_90a)",
                self.arch
            )
        })?;
        Ok(PtxOptions {
            divisible_by_16: aligned_mask(k, self.aligned)?,
            num_stages: self.num_stages.max(1),
            ..PtxOptions::new(arch, self.num_warps)
        })
    }
}

/// `--emit layouts` for one kernel.
fn layouts(k: &compiler::ir::Kernel, target: &GpuTarget<'_>) -> Result<String, String> {
    #[cfg(feature = "cuda")]
    {
        let opts = target.options(k)?;
        Ok(compiler::backend::print_layouts_gpu(k, &opts))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = target;
        Ok(compiler::backend::print_layouts(k))
    }
}

/// `--emit llvm|ptx`: LLVM IR one module per kernel; PTX as one module of every kernel (one
/// `.entry` each), which `ptxas` takes as it is. With `-v`, the notes on optimisations that do
/// not apply go to stderr; without, a line says how many there are.
fn gpu_text(
    kernels: &[compiler::ir::Kernel],
    emit: Emit,
    target: &GpuTarget<'_>,
) -> Result<String, String> {
    #[cfg(feature = "cuda")]
    {
        use compiler::backend::nvptx;
        let err = |e: compiler::backend::BackendError| format!("error: {e}");
        let mut compiled = vec![];
        let mut notes = vec![];
        for k in kernels {
            let opts = target.options(k)?;
            notes.extend(nvptx::render_notes(k, &opts));
            compiled.push((k, opts));
        }
        if target.verbose {
            for n in &notes {
                eprintln!("note: {n}");
            }
        } else if !notes.is_empty() {
            eprintln!(
                "note: {} of the optimisations asked for do not apply; -v says which and why",
                notes.len()
            );
        }
        match emit {
            Emit::Llvm => {
                let mut out = vec![];
                for (k, opts) in &compiled {
                    out.push(nvptx::emit_llvm(k, opts).map_err(err)?);
                }
                Ok(out.join("\n"))
            }
            _ => nvptx::compile_ptx_module(&compiled).map_err(err),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (kernels, emit, target);
        Err("error: this kiln was built without the GPU backend (feature `cuda`)".into())
    }
}

/// One line per device: the CPU, then each CUDA device, or why there is none.
fn devices() -> String {
    use kiln::runtime::Device;
    let cpu = Device::cpu();
    let mut out = format!("{cpu}: {}\n", cpu.name());
    for ordinal in 0.. {
        match Device::cuda(ordinal) {
            Ok(gpu) => {
                let (major, minor) = gpu.compute_capability().unwrap_or((0, 0));
                out += &format!(
                    "{gpu}: {} (compute capability {major}.{minor})\n",
                    gpu.name()
                );
            }
            Err(e) if ordinal == 0 => {
                out += &format!("no GPU: {e}\n");
                break;
            }
            Err(_) => break,
        }
    }
    out
}

/// The divisibility mask `--aligned` asks for: every pointer parameter, plus the integer
/// parameters named in `ints` (comma-separated). No flag, no specialisation.
fn aligned_mask(k: &compiler::ir::Kernel, ints: Option<&str>) -> Result<u64, String> {
    let Some(ints) = ints else { return Ok(0) };
    let names: Vec<&str> = ints
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let mut mask = 0u64;
    for (i, p) in k.params.iter().enumerate().take(64) {
        let pointer = matches!(p.kind, compiler::ir::ParamKind::Ptr { .. });
        if pointer || names.contains(&p.name.as_str()) {
            mask |= 1 << i;
        }
    }
    for n in names {
        if !k.params.iter().any(|p| p.name == n) {
            return Err(format!(
                "error: --aligned names `{n}`, which is not a parameter of kernel `{}`",
                k.name
            ));
        }
    }
    Ok(mask)
}

fn select<'k>(
    kernels: &'k [compiler::ir::Kernel],
    name: Option<&str>,
) -> Result<Vec<&'k compiler::ir::Kernel>, String> {
    match name {
        None => Ok(kernels.iter().collect()),
        Some(n) => {
            let found: Vec<_> = kernels.iter().filter(|k| k.name == n).collect();
            if found.is_empty() {
                let names: Vec<&str> = kernels.iter().map(|k| k.name.as_str()).collect();
                return Err(format!(
                    "error: no kernel `{n}` in this file (it has: {})",
                    names.join(", ")
                ));
            }
            Ok(found)
        }
    }
}

fn parse_defines(defs: &[String]) -> Result<Defines, String> {
    let mut out = Defines::new();
    for d in defs {
        let (name, value) = d
            .split_once('=')
            .ok_or_else(|| format!("error: `-D {d}`: expected NAME=VALUE"))?;
        let v = compiler::parse_define_value(value.trim()).ok_or_else(|| {
            format!("error: `-D {d}`: `{value}` is not an integer, a float, `true`, `false` or an element type (f32, bf16, f16, i32, i64, bool)")
        })?;
        out.insert(name.trim().to_string(), v);
    }
    Ok(out)
}

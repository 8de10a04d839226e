//! `kiln train`: full fine-tuning or LoRA/LoRA+ of a Hugging Face model folder on a JSONL file,
//! with checkpoints, resumption, metrics and the trained adapter or model written to `--out`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use kiln::models::adapters::{LoraSpec, Target};
use kiln::models::batch::Sequence;
use kiln::models::checkpoint;
use kiln::models::data_parallel::{DataParallel, Zero};
use kiln::models::data_plan::{Examples, LongExamples, Prepared};
use kiln::models::model::Model;
use kiln::models::optim::{OptimizerConfig, Schedule, ScheduleKind};
use kiln::models::precision::Precision;
use kiln::models::rng::{derive, SplitMix64};
use kiln::models::trainer::{Length, LoraOptions, RunEnd, TrainOptions, Trainer};
use kiln::ops::Ops;

use super::data::{self, DataArgs};
use super::device::parse_device;
use super::distributed::{self, Rank, Role};
use super::eval::parse_precision;

/// The arguments of `kiln train`.
#[derive(clap::Args)]
#[command(
    args_override_self = true,
    after_help = "Weight decay applies to every matrix (embeddings, projections, LoRA's A \
and B), never to norm weights or biases. The loss of a step is the mean over all its predicted \
tokens, however they are split into micro-batches."
)]
pub struct TrainArgs {
    /// A Hugging Face model folder (`kiln import` writes one from a GGUF file).
    #[arg(long)]
    model: PathBuf,
    /// A TOML file of flags (`lora-rank = 16`, `lr = 2e-4`, `lora-targets = ["q", "v"]`);
    /// flags on the command line win. Every run writes its effective configuration to
    /// OUT/kiln-train.toml, which this flag takes to repeat it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A JSON Lines or Parquet file of `{"text": ...}`, `{"prompt": ..., "completion": ...}`,
    /// `{"messages": [{"role": ..., "content": ...}, ...]}` (rendered with the chat template,
    /// loss on the assistant's tokens) or `{"input_ids": [...]}` records (optional `labels`,
    /// -100 ignored; used exactly as given). Text and completions end with EOS.
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    data_args: DataArgs,
    /// Where the run writes: metrics.jsonl, checkpoint-STEP/, adapter/ or model/.
    #[arg(long)]
    out: PathBuf,

    /// LoRA rank: train adapters of this rank over a frozen base. Absent: full fine-tuning.
    #[arg(long)]
    lora_rank: Option<usize>,
    /// LoRA alpha; adapters are scaled by alpha / rank (default: 2 × rank).
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// Scale by alpha / sqrt(rank) instead (rsLoRA).
    #[arg(long)]
    rslora: bool,
    /// Dropout on each adapter's input.
    #[arg(long, default_value_t = 0.0)]
    lora_dropout: f32,
    /// The projections that get adapters.
    #[arg(long, value_delimiter = ',', default_value = "q,k,v,o,gate,up,down")]
    lora_targets: Vec<Target>,
    /// LoRA+: B's learning rate is this many times A's (1: plain LoRA).
    #[arg(long, default_value_t = 16.0)]
    lora_plus_ratio: f64,
    /// Start from this PEFT adapter (implies LoRA; its rank, alpha and targets are used).
    #[arg(long)]
    adapter: Option<PathBuf>,

    /// Peak learning rate (default: 2e-4 for LoRA, 2e-5 for full fine-tuning).
    #[arg(long, allow_hyphen_values = true)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    adam_beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    adam_beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    adam_eps: f64,
    /// constant, linear or cosine (decay after the warmup).
    #[arg(long, default_value = "cosine")]
    schedule: ScheduleKind,
    /// Linear warmup steps (default: 3% of the steps, at least 1).
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// The learning rate the decay ends at, as a fraction of --lr.
    #[arg(long, default_value_t = 0.0)]
    lr_floor: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,

    /// Tokens per micro-batch (examples are packed Best-Fit-Decreasing, never padded, and never
    /// attend to each other); see --long-examples for longer ones.
    #[arg(long, default_value_t = 2048)]
    max_seq_len: usize,
    /// Examples longer than --max-seq-len: truncate, split (pieces overlapping by one token,
    /// so every target is kept) or refuse.
    #[arg(long, default_value = "truncate")]
    long_examples: LongExamples,
    /// Tokens per optimizer step, over as many micro-batches as they need: the global budget,
    /// of all ranks together when training data-parallel.
    #[arg(long, default_value_t = 8192)]
    tokens_per_step: usize,
    /// Refuse examples longer than --max-seq-len (--long-examples refuse).
    #[arg(long)]
    no_truncate: bool,
    /// Optimizer steps (default: one epoch).
    #[arg(long, conflicts_with = "epochs")]
    steps: Option<usize>,
    /// Passes over the data (each in a new order).
    #[arg(long)]
    epochs: Option<usize>,
    /// Seeds the data order, the adapters' initialisation and dropout.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Compute precision: bf16 (f32 master weights and optimizer state) or f32.
    #[arg(long, default_value = "bf16", value_parser = parse_precision)]
    precision: Precision,
    /// cpu, cuda or cuda:N (default: the first GPU if there is one).
    #[arg(long)]
    device: Option<String>,
    /// Recompute each block's activations in the backward (less memory, ~1/3 more compute).
    #[arg(long)]
    recompute: bool,
    /// Train data-parallel on this host's first N GPUs, one process each (under torchrun or
    /// srun, leave it out: their RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT are read).
    #[arg(long, value_name = "N")]
    gpus: Option<usize>,
    /// Data-parallel optimizer state: 0 on every rank, 1 (ZeRO-1) sharded across ranks (each
    /// tensor's masters and moments on one rank, which updates it and broadcasts it).
    #[arg(long, default_value = "0", value_name = "STAGE")]
    zero: Zero,

    /// Write a checkpoint every N steps (0: only when interrupted).
    #[arg(long, default_value_t = 100)]
    save_every: usize,
    /// Keep the newest K checkpoints (0: all).
    #[arg(long, default_value_t = 2)]
    keep: usize,
    /// Continue from a checkpoint folder, or `latest` in --out.
    #[arg(long)]
    resume: Option<PathBuf>,

    /// Evaluation data (same formats as --data).
    #[arg(long, conflicts_with = "eval_fraction")]
    eval_data: Option<PathBuf>,
    /// Hold out this fraction of --data for evaluation instead.
    #[arg(long)]
    eval_fraction: Option<f64>,
    /// Evaluate every N steps (0: only at the end); needs eval data.
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Print a log line every N steps.
    #[arg(long, default_value_t = 1)]
    log_every: usize,
    /// Print nothing but errors and the final summary.
    #[arg(long)]
    quiet: bool,
    /// Start over in an --out that holds a run already (its metrics and checkpoints are
    /// removed); without it such an --out is refused unless --resume continues it.
    #[arg(long)]
    overwrite: bool,
    /// The effective configuration as TOML (filled in by `main`, not a flag).
    #[arg(skip)]
    pub effective_config: String,
}

pub fn run(args: TrainArgs) -> Result<String, String> {
    if !args.model.is_dir() {
        return Err(format!(
            "--model {}: no such folder (a Hugging Face model folder; `kiln import` makes one \
             from a GGUF file)",
            args.model.display()
        ));
    }
    match distributed::role(args.gpus, args.device.as_deref())? {
        Role::Single => {
            // `--gpus 1` asks for a GPU: never the CPU fallback.
            let device = args.device.as_deref().or(args.gpus.map(|_| "cuda"));
            let ops = parse_device(device)?;
            train(args, ops, None)
        }
        Role::Launcher(n) => distributed::launch(n),
        Role::Rank(env) => {
            if env.local_rank == 0 {
                // Each host's first rank fills the token cache before the ranks meet, so its
                // other ranks read it instead of tokenizing (and writing it) all at once.
                warm_token_cache(&args)?;
            }
            let (ops, rank) = distributed::join(env)?;
            train(args, ops, Some(&rank)).map_err(|e| rank.fail(e))
        }
    }
}

/// Tokenizes --data into the token cache (a no-op when it is there already).
fn warm_token_cache(args: &TrainArgs) -> Result<(), String> {
    let config = kiln::models::config::ModelConfig::load(args.model.join("config.json"))
        .map_err(|e| e.to_string())?;
    let tokenizer = data::tokenizer(&args.model)?;
    data::read_cached(
        &args.data,
        tokenizer.as_ref(),
        config.vocab,
        &args.data_args,
        args.quiet,
    )
    .map(|_| ())
}

/// The run on `ops`, alone or as `rank` of a data-parallel run (only rank 0 prints progress
/// and writes to --out).
fn train(args: TrainArgs, ops: Arc<Ops>, rank: Option<&Rank>) -> Result<String, String> {
    let err = |e: kiln::models::Error| e.to_string();
    let is_root = rank.is_none_or(|r| r.env.rank == 0);
    let quiet = args.quiet || !is_root;
    // Refused before anything is read; with --overwrite, removed once the run is set up.
    let replaced = match (&args.resume, is_root) {
        (None, true) => guard_out(&args.out, args.overwrite)?,
        _ => Vec::new(),
    };
    let device_name = ops.device().name().to_string();
    let available = match ops.device().memory() {
        Ok(Some((free, _))) => Some((free as u64, ops.device().to_string())),
        Ok(None) => kiln::models::memory::host_available().map(|b| (b, "the host".to_string())),
        Err(_) => None,
    };
    if let Some((bytes, place)) = available {
        check_memory(&args, bytes, &place)?;
    }
    let model = Model::load(&args.model, ops, args.precision).map_err(err)?;
    let vocab = model.config.vocab;
    let tokenizer = data::tokenizer(&args.model)?;
    let (store, _) = data::read_cached(
        &args.data,
        tokenizer.as_ref(),
        vocab,
        &args.data_args,
        quiet,
    )?;
    let long = if args.no_truncate {
        LongExamples::Refuse
    } else {
        args.long_examples
    };
    let source = args.data.display().to_string();
    let (examples, prepared) =
        Examples::prepare(store, args.max_seq_len, long, &source).map_err(err)?;
    let (train, eval) = match (&args.eval_data, args.eval_fraction) {
        (Some(path), _) => {
            let (store, report) =
                data::read_small(path, tokenizer.as_ref(), vocab, &args.data_args)?;
            if !quiet {
                eprintln!("{}", data::describe(path, &report, 0.0));
            }
            let at = path.display().to_string();
            let (eval, _) =
                Examples::prepare(Arc::new(store), args.max_seq_len, long, &at).map_err(err)?;
            (examples, Some(eval.to_sequences()))
        }
        (None, Some(f)) => split(examples, f, args.seed)?,
        (None, None) => (examples, None),
    };
    if args.eval_every > 0 && eval.is_none() {
        return Err("--eval-every needs --eval-data or --eval-fraction".into());
    }
    let lora = lora_options(&args)?;
    let lr = args.lr.unwrap_or(if lora.is_some() { 2e-4 } else { 2e-5 });
    if args.max_grad_norm < 0.0 {
        return Err(format!(
            "--max-grad-norm {}: must be 0 (off) or positive",
            args.max_grad_norm
        ));
    }
    let length = match (args.steps, args.epochs) {
        (Some(s), _) => Length::Steps(s),
        (None, Some(e)) => Length::Epochs(e),
        (None, None) => Length::Epochs(1),
    };
    let options = TrainOptions {
        lora,
        optimizer: OptimizerConfig {
            lr,
            beta1: args.adam_beta1,
            beta2: args.adam_beta2,
            eps: args.adam_eps,
            weight_decay: args.weight_decay,
            max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
            schedule: Schedule {
                kind: args.schedule,
                warmup: 0,
                total: 0,
                floor: args.lr_floor,
            },
        },
        max_seq_len: args.max_seq_len,
        tokens_per_step: args.tokens_per_step,
        length,
        warmup_steps: args.warmup_steps,
        seed: args.seed,
        recompute: args.recompute,
        eval_every: args.eval_every,
        save_every: args.save_every,
        keep: args.keep,
    };
    let mut trainer = Trainer::new(model, &args.model, options, train, eval).map_err(err)?;
    if let Some(rank) = rank {
        trainer
            .set_data_parallel(DataParallel::new(rank.comm.clone(), args.zero))
            .map_err(err)?;
    }
    let total = trainer.total_steps;
    remove_all(&replaced)?;
    if is_root && !args.effective_config.is_empty() {
        std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
        kiln::models::atomic::write_file(
            &args.out.join("kiln-train.toml"),
            args.effective_config.as_bytes(),
        )
        .map_err(err)?;
    }
    if let Some(resume) = &args.resume {
        let dir = checkpoint::resolve(resume, &args.out).map_err(err)?;
        trainer.resume(&dir).map_err(err)?;
        if !quiet {
            eprintln!(
                "resumed from {} at step {}",
                dir.display(),
                trainer.state.step
            );
        }
    }
    if !quiet {
        let mode = match &trainer.options.lora {
            Some(l) => format!(
                "LoRA r{} alpha {} on {} (LoRA+ ratio {})",
                l.spec.rank,
                l.spec.alpha,
                l.spec
                    .targets
                    .iter()
                    .map(|t| t.short())
                    .collect::<Vec<_>>()
                    .join(","),
                l.plus_ratio
            ),
            None => "full fine-tuning".to_string(),
        };
        let device_name = match rank {
            Some(r) => format!(
                "{} GPUs ({device_name}, ...; data parallel, ZeRO-{})",
                r.env.world_size, args.zero
            ),
            None => device_name,
        };
        eprintln!(
            "kiln train: {mode}, {} on {device_name}; {} examples{}, {} steps of up to {} \
             tokens in micro-batches of {}; packing efficiency {:.1}%",
            trainer.model.precision,
            trainer.plan.examples.len(),
            describe_long(&prepared, long),
            total,
            args.tokens_per_step,
            args.max_seq_len,
            100.0 * trainer.plan.packing_efficiency()
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while the checkpoint is written ends the process at once.
        signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone())
            .and_then(|_| signal_hook::flag::register(signal, stop.clone()))
            .map_err(|e| format!("cannot handle signals: {e}"))?;
    }
    let progress = Progress::new(quiet, args.log_every, total, trainer.state.step);
    let (out, save_every) = (args.out.clone(), args.save_every);
    let end = trainer.run(&args.out, &stop, |m| {
        progress.step(m);
        if is_root && ((save_every > 0 && m.step % save_every == 0) || m.step == total) {
            plot(&out, &progress);
        }
    });
    progress.finish();
    let end = end.map_err(err)?;
    if !is_root {
        return Ok(String::new());
    }
    if matches!(end, RunEnd::Interrupted { .. }) {
        plot(&args.out, &progress);
    }
    Ok(match end {
        RunEnd::Finished { output } => format!(
            "trained {total} steps in {:.1} s; wrote {}, {} and {}\n",
            trainer.state.elapsed_s,
            output.display(),
            args.out.join("metrics.jsonl").display(),
            args.out.join("loss.png").display()
        ),
        RunEnd::Interrupted { checkpoint } => format!(
            "interrupted at step {}; checkpoint {} (continue with --resume latest)\n",
            trainer.state.step,
            checkpoint.display()
        ),
    })
}

/// `--lora-*` and `--adapter` as the trainer takes them (`None`: full fine-tuning).
fn lora_options(args: &TrainArgs) -> Result<Option<LoraOptions>, String> {
    let adapter_rank = match &args.adapter {
        Some(dir) => Some(
            kiln::models::lora::AdapterConfig::load(dir)
                .map_err(|e| e.to_string())?
                .rank,
        ),
        None => None,
    };
    let rank = match (args.lora_rank, adapter_rank) {
        (None, None) => return Ok(None),
        (Some(r), Some(theirs)) if r != theirs => {
            return Err(format!(
                "--lora-rank {r}, but the adapter {} has rank {theirs}",
                args.adapter.as_deref().unwrap_or(Path::new("")).display()
            ))
        }
        (Some(r), _) | (None, Some(r)) => r,
    };
    let mut targets = args.lora_targets.clone();
    targets.sort();
    targets.dedup();
    let spec = LoraSpec {
        rank,
        alpha: args.lora_alpha.unwrap_or(2.0 * rank as f64),
        rslora: args.rslora,
        dropout: args.lora_dropout,
        targets,
    };
    spec.validate().map_err(|e| e.to_string())?;
    Ok(Some(LoraOptions {
        spec,
        plus_ratio: args.lora_plus_ratio,
        adapter: args.adapter.clone(),
    }))
}

/// Refuses an `out` that holds a run already, unless `overwrite`; returns what the new run
/// replaces (its metrics, plot and checkpoints; outputs are replaced at the end).
fn guard_out(out: &Path, overwrite: bool) -> Result<Vec<PathBuf>, String> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Ok(Vec::new());
    };
    let run_files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            name == "metrics.jsonl" || name.starts_with("checkpoint-")
        })
        .collect();
    if run_files.is_empty() {
        return Ok(Vec::new());
    }
    if !overwrite {
        return Err(format!(
            "--out {} holds a run already ({}); --resume latest continues it, --overwrite starts \
             over",
            out.display(),
            run_files
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(run_files
        .into_iter()
        .chain([out.join("loss.png")])
        .collect())
}

/// Removes what `--overwrite` replaces.
fn remove_all(paths: &[PathBuf]) -> Result<(), String> {
    for path in paths {
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!(
                    "--overwrite: cannot remove {}: {e}",
                    path.display()
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Refuses a run the device cannot hold: the estimate of `kiln_models::memory` against the
/// `available` bytes of `place` (the host, or a GPU's free memory), with the flags that need
/// less.
fn check_memory(args: &TrainArgs, available: u64, place: &str) -> Result<(), String> {
    // `place` is "the host" or a GPU's name.
    use kiln::models::memory::{estimate, human};
    let config = kiln::models::config::ModelConfig::load(args.model.join("config.json"))
        .map_err(|e| e.to_string())?;
    let lora = args.lora_rank.map(|rank| kiln::models::adapters::LoraSpec {
        rank,
        alpha: 2.0 * rank as f64,
        rslora: false,
        dropout: 0.0,
        targets: args.lora_targets.clone(),
    });
    let tokens = args.max_seq_len.min(args.tokens_per_step);
    let e = estimate(
        &config,
        args.precision,
        lora.as_ref(),
        tokens,
        args.recompute,
        place != "the host",
    );
    if e.total() <= available {
        return Ok(());
    }
    let mut less = vec![];
    if !args.recompute {
        less.push("--recompute");
    }
    less.push("a smaller --max-seq-len");
    if lora.is_none() {
        less.push("LoRA (--lora-rank 16)");
    }
    Err(format!(
        "this run needs about {} (weights {}, gradients {}, optimizer {}, activations {}), and \
         {place} has {} available; {} would need less (`kiln info --model {}` shows the \
         options)",
        human(e.total()),
        human(e.weights),
        human(e.gradients),
        human(e.optimizer),
        human(e.activations + e.workspace),
        human(available),
        less.join(", "),
        args.model.display()
    ))
}

/// Redraws `out/loss.png`; a failure is reported, not fatal (the run's outputs matter more).
fn plot(out: &Path, progress: &Progress) {
    if let Err(e) = crate::plot::draw_metrics(&out.join("metrics.jsonl"), &out.join("loss.png")) {
        progress.println(&format!("warning: {e}"));
    }
}

/// Step progress: a bar (step/total, loss, tokens/s, learning rate, ETA) on a terminal, plain
/// lines every `--log-every` steps otherwise, nothing with `--quiet`.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    every: usize,
    total: usize,
}

impl Progress {
    fn new(quiet: bool, every: usize, total: usize, done: usize) -> Progress {
        use std::io::IsTerminal;
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "step {pos}/{len} [{bar:30}] {msg} (ETA {eta})",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_position(done as u64);
            bar
        });
        Progress {
            bar,
            quiet,
            every: every.max(1),
            total,
        }
    }

    fn step(&self, m: &kiln::models::metrics::StepMetrics) {
        let eval = m
            .eval_loss
            .map(|e| format!("  eval {e:.4}"))
            .unwrap_or_default();
        let skipped = if m.skipped {
            "  SKIPPED (non-finite)"
        } else {
            ""
        };
        let summary = format!(
            "loss {:.4}  grad norm {:.3}  lr {:.3e}  {:.0} tokens/s{eval}{skipped}",
            m.loss, m.grad_norm, m.lr, m.tokens_per_s
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(m.step as u64);
                bar.set_message(summary.clone());
                if m.skipped || m.eval_loss.is_some() {
                    bar.println(format!("step {}/{}  {summary}", m.step, self.total));
                }
            }
            None if self.quiet => {}
            None => {
                if m.step % self.every == 0 || m.step == self.total || m.skipped {
                    eprintln!(
                        "step {}/{}  {summary}  {:.1} s",
                        m.step, self.total, m.elapsed_s
                    );
                }
            }
        }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// What fitting the examples into --max-seq-len did, for the start-of-run line.
fn describe_long(p: &Prepared, long: LongExamples) -> String {
    let mut out = String::new();
    if p.long > 0 {
        out.push_str(&match long {
            LongExamples::Truncate => format!(
                " ({} longer than --max-seq-len truncated, {} tokens dropped)",
                p.long, p.tokens_dropped
            ),
            LongExamples::Split => format!(
                " ({} longer than --max-seq-len split into {} more)",
                p.long, p.extra_pieces
            ),
            LongExamples::Refuse => String::new(),
        });
    }
    if p.without_targets > 0 {
        out.push_str(&format!(
            " ({} dropped: no target left after truncation)",
            p.without_targets
        ));
    }
    out
}

/// Holds out `fraction` of the examples (at least one, chosen by the seed) for evaluation.
fn split(
    examples: Examples,
    fraction: f64,
    seed: u64,
) -> Result<(Examples, Option<Vec<Sequence>>), String> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(format!(
            "--eval-fraction {fraction}: must be between 0 and 1"
        ));
    }
    let n = examples.len();
    let held = ((n as f64 * fraction).round() as usize).max(1);
    if held >= n {
        return Err(format!(
            "--eval-fraction {fraction} of {n} examples leaves none to train on"
        ));
    }
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix64::new(derive(seed, &[0xe7a1])).shuffle(&mut order);
    let eval = examples.select(&order[n - held..]).to_sequences();
    let mut train = order[..n - held].to_vec();
    train.sort_unstable();
    Ok((examples.select(&train), Some(eval)))
}

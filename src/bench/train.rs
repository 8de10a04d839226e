//! `kiln bench train`: training throughput of Kiln's [`Trainer`] beside Hugging Face
//! transformers (+ PEFT for LoRA), eager, on the same model, shapes and machine, in one command
//! (`../shared/bench/peer_cpu_train.py`, or `--peer SCRIPT`). Each mode runs Kiln, then the
//! peer, so a drift in the machine's speed touches both; only the ratio of one run means much.
//!
//! A step is `batch` sequences of `seq` random tokens (every token real: no padding), packed
//! into one micro-batch; forward, backward, clipping and AdamW. The median step time over
//! `steps` steps after one warm-up step is reported.

use std::path::{Path, PathBuf};

use kiln::models::adapters::{LoraSpec, Target};
use kiln::models::batch::Sequence;
use kiln::models::data_plan::Examples;
use kiln::models::metrics::peak_resident_bytes;
use kiln::models::model::Model;
use kiln::models::optim::{OptimizerConfig, Schedule, ScheduleKind};
use kiln::models::precision::Precision;
use kiln::models::rng::SplitMix64;
use kiln::models::trainer::{Length, LoraOptions, TrainOptions, Trainer};
use serde_json::Value;

/// The arguments of `kiln bench train`.
#[derive(clap::Args)]
pub struct TrainBenchArgs {
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// A Hugging Face model folder (default: SmolLM2-135M-Instruct, imported from
    /// `scripts/fetch-smollm2`'s GGUF into `$KILN_MODELS_DIR` on first use).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    seq: usize,
    #[arg(long, default_value_t = 16)]
    lora_rank: usize,
    /// Instead of --model: a model of this Hugging Face config.json with random weights
    /// (written to a temporary folder), e.g. bench/qwen2.5-0.5b.config.json.
    #[arg(long, value_name = "CONFIG", conflicts_with = "model")]
    random: Option<PathBuf>,
    /// Timed steps per mode (after one warm-up step).
    #[arg(long, default_value_t = 4)]
    steps: usize,
    /// Modes, comma-separated: lora, full.
    #[arg(long, value_delimiter = ',', default_value = "lora,full")]
    modes: Vec<String>,
    /// Kiln's compute precisions, comma-separated (the peer runs f32).
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16", value_parser = crate::commands::eval::parse_precision)]
    precisions: Vec<Precision>,
    /// The peer script.
    #[arg(long, default_value = "../shared/bench/peer_cpu_train.py")]
    peer: PathBuf,
    /// The Python that runs it (with torch, transformers and peft).
    #[arg(long, default_value = "python3")]
    python: String,
    /// Measure Kiln only.
    #[arg(long)]
    no_peer: bool,
}

/// One measured configuration.
struct Row {
    who: String,
    mode: String,
    precision: String,
    step_s: f64,
    tokens_per_s: f64,
    peak_bytes: Option<u64>,
}

pub fn run(args: TrainBenchArgs) -> Result<String, String> {
    let ops = crate::commands::device::parse_device(Some(&args.device))?;
    let random_dir;
    let model_dir = match (&args.model, &args.random) {
        (Some(m), _) => m.clone(),
        (None, Some(config)) => {
            random_dir = tempfile::tempdir().map_err(|e| format!("a temporary folder: {e}"))?;
            random_model(config, random_dir.path())?;
            random_dir.path().to_path_buf()
        }
        (None, None) => default_model()?,
    };
    let mut rows: Vec<Row> = vec![];
    let mut out = format!(
        "kiln bench train: {} on {}, {} x {} tokens a step, LoRA r{} on all 7 projections\n",
        model_dir.display(),
        ops.device().name(),
        args.batch,
        args.seq,
        args.lora_rank
    );
    for mode in &args.modes {
        if mode != "lora" && mode != "full" {
            return Err(format!("--modes: unknown mode `{mode}` (lora, full)"));
        }
        for &precision in &args.precisions {
            let model =
                Model::load(&model_dir, ops.clone(), precision).map_err(|e| e.to_string())?;
            let (step_s, norm) = kiln_steps(model, &model_dir, mode, &args)?;
            eprintln!("kiln {mode} {precision}: {step_s:.3} s a step (last grad norm {norm:.4})");
            rows.push(Row {
                who: "kiln".into(),
                mode: mode.clone(),
                precision: precision.to_string(),
                step_s,
                tokens_per_s: (args.batch * args.seq) as f64 / step_s,
                peak_bytes: Some(peak_resident_bytes()),
            });
        }
        if !args.no_peer {
            let peer = peer_step(&args, &model_dir, mode)?;
            eprintln!("peer {mode}: {peer}");
            let step_s = peer["step_s_median"]
                .as_f64()
                .ok_or("peer: no step_s_median")?;
            rows.push(Row {
                who: peer["peer"].as_str().unwrap_or("peer").to_string(),
                mode: mode.clone(),
                precision: peer["dtype"].as_str().unwrap_or("?").replace("float", "f"),
                step_s,
                tokens_per_s: (args.batch * args.seq) as f64 / step_s,
                peak_bytes: None,
            });
        }
    }
    out.push_str(&format!(
        "{:<14} {:<5} {:<5} {:>9} {:>10} {:>9} {:>12}\n",
        "who", "mode", "prec", "step s", "tokens/s", "vs peer", "peak RSS"
    ));
    for r in &rows {
        let peer = rows
            .iter()
            .find(|p| p.who != "kiln" && p.mode == r.mode)
            .map(|p| r.tokens_per_s / p.tokens_per_s);
        out.push_str(&format!(
            "{:<14} {:<5} {:<5} {:>9.3} {:>10.1} {:>9} {:>12}\n",
            r.who,
            r.mode,
            r.precision,
            r.step_s,
            r.tokens_per_s,
            peer.map(|x| format!("{x:.2}x")).unwrap_or_default(),
            r.peak_bytes
                .map(|b| format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64))
                .unwrap_or_default(),
        ));
    }
    out.push_str(
        "peak RSS is the Kiln process's high-water mark so far (it includes earlier rows)\n",
    );
    Ok(out)
}

/// Kiln's median step seconds (and the last gradient norm, a sanity check) for `mode`.
fn kiln_steps(
    model: Model,
    dir: &Path,
    mode: &str,
    args: &TrainBenchArgs,
) -> Result<(f64, f64), String> {
    let vocab = model.config.vocab as u64;
    let mut rng = SplitMix64::new(1);
    let sequences: Vec<Sequence> = (0..(args.steps + 1) * args.batch)
        .map(|_| Sequence::new((0..args.seq).map(|_| rng.below(vocab) as u32).collect()))
        .collect();
    let lora = (mode == "lora").then(|| LoraOptions {
        spec: LoraSpec {
            rank: args.lora_rank,
            alpha: 2.0 * args.lora_rank as f64,
            rslora: false,
            dropout: 0.0,
            targets: Target::ALL.to_vec(),
        },
        plus_ratio: 16.0,
        adapter: None,
    });
    let tokens = args.batch * args.seq;
    let options = TrainOptions {
        lora,
        optimizer: OptimizerConfig {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
            schedule: Schedule {
                kind: ScheduleKind::Constant,
                warmup: 0,
                total: 0,
                floor: 0.0,
            },
        },
        max_seq_len: tokens,
        tokens_per_step: tokens,
        length: Length::Steps(args.steps + 1),
        warmup_steps: Some(0),
        seed: 1,
        recompute: false,
        eval_every: 0,
        save_every: 0,
        keep: 0,
    };
    let examples = Examples::from_sequences(&sequences).map_err(|e| e.to_string())?;
    let mut trainer =
        Trainer::new(model, dir, options, examples, None).map_err(|e| e.to_string())?;
    let mut times = vec![];
    let mut norm = 0.0;
    for i in 0..=args.steps {
        let m = trainer.step().map_err(|e| e.to_string())?;
        if !(m.grad_norm.is_finite() && m.grad_norm > 0.0) {
            return Err(format!(
                "kiln {mode}: step {} has gradient norm {}",
                m.step, m.grad_norm
            ));
        }
        norm = m.grad_norm;
        if i > 0 {
            times.push(m.input_tokens as f64 / m.tokens_per_s);
        }
        if i == 0 {
            kiln::runtime::profile::reset(); // KILN_PROFILE: the timed steps only
        }
    }
    if kiln::runtime::profile::enabled() {
        eprintln!(
            "kiln {mode}: where the {} timed steps went (KILN_PROFILE)\n{}",
            args.steps,
            kiln::runtime::profile::report()
        );
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], norm))
}

/// Runs the peer script for one mode and returns its JSON line.
fn peer_step(args: &TrainBenchArgs, model: &Path, mode: &str) -> Result<Value, String> {
    let peer_args: Vec<String> = [
        "--model",
        &model.display().to_string(),
        "--batch",
        &args.batch.to_string(),
        "--seq",
        &args.seq.to_string(),
        "--modes",
        mode,
        "--lora-rank",
        &args.lora_rank.to_string(),
        "--steps",
        &args.steps.to_string(),
        "--dtype",
        "float32",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    super::run_peer(&args.python, &args.peer, &peer_args)
}

/// A model folder in `dir` of the config `config` with seeded random weights (uniform, standard
/// deviation 0.02; norms 1), as the peers' speed runs use.
fn random_model(config: &Path, dir: &Path) -> Result<(), String> {
    std::fs::copy(config, dir.join("config.json"))
        .map_err(|e| format!("{}: {e}", config.display()))?;
    // Uniform of standard deviation 0.02: half-width 0.02 · √3.
    kiln::models::random_init::save_random_model(dir, 5, 0.02 * 3f32.sqrt())
        .map_err(|e| e.to_string())
}

/// SmolLM2-135M-Instruct as a Hugging Face folder, imported once from the fetched GGUF.
pub fn default_model() -> Result<PathBuf, String> {
    let dir = std::env::var_os("KILN_MODELS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kiln-models")))
        .ok_or("set KILN_MODELS_DIR or --model")?;
    let folder = dir.join("SmolLM2-135M-Instruct");
    if folder.join("model.safetensors").is_file() {
        return Ok(folder);
    }
    let gguf = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.is_file() {
        return Err(format!(
            "{} is missing: run scripts/fetch-smollm2 (or pass --model)",
            gguf.display()
        ));
    }
    kiln::models::gguf::import(&gguf, &folder).map_err(|e| e.to_string())?;
    Ok(folder)
}

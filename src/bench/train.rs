//! `kiln bench train`: training throughput of Kiln's [`Trainer`] beside Hugging Face
//! transformers (+ PEFT for LoRA), eager, on the same model, shapes and machine, in one command
//! (`../shared/bench/peer_cpu_train.py`, or `--peer SCRIPT`). Each mode runs Kiln, then the
//! peer, so a drift in the machine's speed touches both; only the ratio of one run means much.
//! (On the GPU, `scripts/gpu-check train` runs the GPU peers, `peer_hf.py`, in the same call.)
//!
//! A step is `batch` x `seq` tokens, every one real (no padding), packed into one micro-batch:
//! `--data fixed` gives `batch` sequences of exactly `seq` random tokens, `--data varlen`
//! sequences of log-normal lengths in [32, seq] (median ~seq/4, `peer_hf.py`'s distribution)
//! packed Best-Fit-Decreasing into steps of at most `batch` x `seq` tokens. Forward, backward,
//! clipping and AdamW, with one step queued ahead of the one being read (as `kiln train` runs).
//! The median over `steps` steps after one warm-up step is reported: real tokens/s, the peak
//! memory (the device's pool on a GPU, the process's RSS on the CPU) and the model FLOPs
//! utilisation on a GPU (against 790 TFLOP/s, the H200's dense bf16 peak).
//!
//! `--gpus N` (with `--device cuda`) measures data-parallel training on N GPUs, one process
//! each as `kiln train --gpus N` runs them: every GPU trains `batch` x `seq` tokens a step (the
//! global step is N times that), and the tokens/s reported are the global step's; the peak
//! memory is rank 0's GPU's. `scripts/gpu-check dp` runs PyTorch DDP beside it.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use kiln::models::adapters::{LoraSpec, Target};
use kiln::models::batch::Sequence;
use kiln::models::config::ModelConfig;
use kiln::models::data_parallel::{DataParallel, Zero};
use kiln::models::data_plan::Examples;
use kiln::models::metrics::peak_resident_bytes;
use kiln::models::model::Model;
use kiln::models::optim::{OptimizerConfig, Schedule, ScheduleKind};
use kiln::models::precision::Precision;
use kiln::models::rng::SplitMix64;
use kiln::models::trainer::{Length, LoraOptions, PendingStep, TrainOptions, Trainer};
use kiln::models::HostTensor;
use kiln::runtime::collective::Communicator;
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
    /// Timed steps per mode (after one warm-up step, and before one more that gives the last
    /// of them its time).
    #[arg(long, default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
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
    /// The sequences: fixed (`batch` x `seq` tokens) or varlen (log-normal lengths, packed).
    #[arg(long, default_value = "fixed", value_parser = ["fixed", "varlen"])]
    data: String,
    /// Recompute each layer's activations in the backward pass (activation checkpointing).
    #[arg(long)]
    recompute: bool,
    /// Split each step into micro-batches of at most this many tokens (`kiln train`'s
    /// --max-seq-len; the step's gradient is the same): less activation memory, smaller GEMMs.
    /// Default: the whole step in one micro-batch. At least --seq.
    #[arg(long, value_name = "TOKENS")]
    micro_batch_tokens: Option<usize>,
    /// Data-parallel on this host's first N GPUs (with --device cuda and --no-peer): `batch` x
    /// `seq` tokens per GPU a step.
    #[arg(long, value_name = "N")]
    gpus: Option<usize>,
    /// With --gpus: the optimizer state on every GPU (0) or sharded (1, ZeRO-1).
    #[arg(long, default_value = "0", value_name = "STAGE")]
    zero: Zero,
}

/// The H200's dense bf16 tensor-core peak, the denominator of the reported MFU.
const PEAK_FLOPS: f64 = 790e12;

/// One measured configuration.
struct Row {
    who: String,
    mode: String,
    precision: String,
    step_s: f64,
    tokens_per_s: f64,
    peak_bytes: Option<u64>,
    mfu: Option<f64>,
}

pub fn run(args: TrainBenchArgs) -> Result<String, String> {
    if let Some(m) = args.micro_batch_tokens {
        if m < args.seq {
            return Err(format!(
                "--micro-batch-tokens {m} is shorter than a sequence (--seq {})",
                args.seq
            ));
        }
    }
    use crate::commands::distributed::{self, Role};
    match distributed::role(args.gpus, Some(&args.device))? {
        Role::Single => {
            let ops = crate::commands::device::parse_device(Some(&args.device))?;
            bench(args, ops, None)
        }
        Role::Launcher(n) => {
            if !args.no_peer {
                return Err(format!(
                    "--gpus {n} measures Kiln only (--no-peer): scripts/gpu-check dp runs the \
                     PyTorch DDP peer (bench/peer_ddp.py) under torchrun beside it"
                ));
            }
            distributed::launch(n)
        }
        Role::Rank(env) => {
            let (ops, rank) = distributed::join(env)?;
            let dp = (rank.comm.clone(), rank.env.rank, rank.env.world_size);
            bench(args, ops, Some(dp)).map_err(|e| rank.fail(e))
        }
    }
}

/// This process's part of a data-parallel benchmark: the communicator, its rank, the world.
type Ranks = (Arc<dyn Communicator>, usize, usize);

fn bench(
    args: TrainBenchArgs,
    ops: Arc<kiln::ops::Ops>,
    dp: Option<Ranks>,
) -> Result<String, String> {
    let world = dp.as_ref().map_or(1, |d| d.2);
    let is_root = dp.as_ref().is_none_or(|d| d.1 == 0);
    let on_gpu = ops.device().kind() == kiln::runtime::DeviceKind::Cuda;
    let folder;
    // A random model is drawn tensor by tensor as it is uploaded (a 7B-class model never sits
    // on the host whole); it is written to a folder only for a peer that reads one.
    let (model_dir, random) = match (&args.model, &args.random) {
        (Some(m), _) => (m.clone(), None),
        (None, Some(config)) => {
            folder = tempfile::tempdir().map_err(|e| format!("a temporary folder: {e}"))?;
            std::fs::copy(config, folder.path().join("config.json"))
                .map_err(|e| format!("{}: {e}", config.display()))?;
            let config = ModelConfig::load(folder.path()).map_err(|e| e.to_string())?;
            if !args.no_peer {
                random_model(folder.path())?;
            }
            (folder.path().to_path_buf(), Some(config))
        }
        (None, None) => (default_model()?, None),
    };
    let mut rows: Vec<Row> = vec![];
    let gpus = match world {
        1 => String::new(),
        n => format!(" x {n} GPUs (data parallel, ZeRO-{})", args.zero),
    };
    let mut out = format!(
        "kiln bench train: {} on {}{gpus}, {} data, {} x {} tokens a step{}, LoRA r{} on all \
         7 projections{}\n",
        args.random.as_ref().unwrap_or(&model_dir).display(),
        ops.device().name(),
        args.data,
        args.batch,
        args.seq,
        if world > 1 { " per GPU" } else { "" },
        args.lora_rank,
        if args.recompute {
            ", activations recomputed"
        } else {
            ""
        },
    );
    if let Some(m) = args.micro_batch_tokens {
        out.push_str(&format!("micro-batches of at most {m} tokens\n"));
    }
    let vocab = ModelConfig::load(&model_dir)
        .map_err(|e| e.to_string())?
        .vocab;
    let sequences = bench_sequences(&args, vocab, world);
    for mode in &args.modes {
        if mode != "lora" && mode != "full" {
            return Err(format!("--modes: unknown mode `{mode}` (lora, full)"));
        }
        for &precision in &args.precisions {
            let model = match &random {
                Some(config) => Model::from_tensors(config.clone(), ops.clone(), precision, |n| {
                    Ok(random_tensor(config, n))
                }),
                None => Model::load(&model_dir, ops.clone(), precision),
            }
            .map_err(|e| e.to_string())?;
            let flops_per_token = model_flops_per_token(&model.config, mode, &sequences);
            ops.device()
                .peak_memory_bytes(true)
                .map_err(|e| e.to_string())?;
            let kiln = kiln_steps(
                model,
                &model_dir,
                mode,
                &args,
                &sequences,
                random.as_ref(),
                dp.as_ref(),
            )?;
            let device_peak = ops
                .device()
                .peak_memory_bytes(false)
                .map_err(|e| e.to_string())?;
            if is_root {
                eprintln!(
                    "kiln {mode} {precision}: {:.3} s a step ({:.1} ms of them the host's to \
                     queue it), {:.0} tokens/s (last grad norm {:.4}, loss {:.4} -> {:.4})",
                    kiln.step_s,
                    1e3 * kiln.submit_s,
                    kiln.tokens_per_s,
                    kiln.grad_norm,
                    kiln.first_loss,
                    kiln.last_loss
                );
            }
            rows.push(Row {
                who: "kiln".into(),
                mode: mode.clone(),
                precision: precision.to_string(),
                step_s: kiln.step_s,
                tokens_per_s: kiln.tokens_per_s,
                peak_bytes: Some(device_peak.unwrap_or_else(peak_resident_bytes)),
                mfu: on_gpu
                    .then(|| kiln.tokens_per_s * flops_per_token / (PEAK_FLOPS * world as f64)),
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
                mfu: None,
            });
        }
    }
    out.push_str(&format!(
        "{:<14} {:<5} {:<5} {:>9} {:>10} {:>9} {:>12} {:>6}\n",
        "who", "mode", "prec", "step s", "tokens/s", "vs peer", "peak memory", "MFU"
    ));
    for r in &rows {
        let peer = rows
            .iter()
            .find(|p| p.who != "kiln" && p.mode == r.mode)
            .map(|p| r.tokens_per_s / p.tokens_per_s);
        out.push_str(&format!(
            "{:<14} {:<5} {:<5} {:>9.3} {:>10.1} {:>9} {:>12} {:>6}\n",
            r.who,
            r.mode,
            r.precision,
            r.step_s,
            r.tokens_per_s,
            peer.map(|x| format!("{x:.2}x")).unwrap_or_default(),
            r.peak_bytes
                .map(|b| format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64))
                .unwrap_or_default(),
            r.mfu
                .map(|m| format!("{:.1}%", 100.0 * m))
                .unwrap_or_default(),
        ));
    }
    if !is_root {
        return Ok(String::new());
    }
    out.push_str(if on_gpu && world > 1 {
        "tokens/s: the global step's (all GPUs); peak memory: rank 0's GPU's pool high-water \
         mark during that row's steps\n"
    } else if on_gpu {
        "peak memory: the device pool's high-water mark during that row's steps\n"
    } else {
        "peak memory: the Kiln process's RSS high-water mark so far (it includes earlier rows)\n"
    });
    Ok(out)
}

/// The benchmark's sequences, enough for the warm-up and timed steps: `--data fixed` gives
/// `batch` sequences of `seq` tokens a step; `--data varlen` lengths drawn log-normally (mean
/// of the log ln(max(32, seq / 4)), deviation 0.8, clamped to [32, seq]) as `peer_hf.py` draws
/// them. Token ids are uniform over the vocabulary.
fn bench_sequences(args: &TrainBenchArgs, vocab: usize, world: usize) -> Vec<Sequence> {
    let mut rng = SplitMix64::new(1);
    let step_tokens = args.batch * args.seq * world;
    // Fixed lengths fill every step exactly (an epoch's last step must not be a partial one,
    // which the shuffled bins would put among the timed steps); Best-Fit-Decreasing leaves a
    // little of each varlen step empty: draw half as many again.
    let wanted = match args.data.as_str() {
        "varlen" => (args.steps + 2) * step_tokens * 3 / 2,
        _ => (args.steps + 3) * step_tokens,
    };
    let mut sequences = vec![];
    let mut total = 0;
    while total < wanted {
        let len = match args.data.as_str() {
            "varlen" => {
                let mu = (args.seq as f64 / 4.0).max(32.0).ln();
                // Box-Muller: one standard normal from two uniforms.
                let (u1, u2) = (1.0 - rng.next_f64(), rng.next_f64());
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                ((mu + 0.8 * z).exp() as usize).clamp(32.min(args.seq), args.seq)
            }
            _ => args.seq,
        };
        total += len;
        sequences.push(Sequence::new(
            (0..len).map(|_| rng.below(vocab as u64) as u32).collect(),
        ));
    }
    sequences
}

/// Model FLOPs a real token costs in one training step (the convention of MFU: recomputation
/// is not counted). Every projection and the vocabulary projection cost 2 FLOPs per weight
/// forward, 2 for the input gradient and, when the weight is trained, 2 for its gradient;
/// causal attention 4 x head_dim x heads per attended key and layer forward, twice that
/// backward. LoRA's own low-rank products are left out (under 1% at rank 32).
fn model_flops_per_token(c: &ModelConfig, mode: &str, sequences: &[Sequence]) -> f64 {
    let (h, q, kv) = (
        c.hidden as f64,
        (c.heads * c.head_dim) as f64,
        (c.kv_heads * c.head_dim) as f64,
    );
    let per_layer = h * q * 2.0 + h * kv * 2.0 + 3.0 * h * c.intermediate as f64;
    let matmul = c.layers as f64 * per_layer + h * c.vocab as f64;
    let per_weight = if mode == "full" { 6.0 } else { 4.0 };
    // Attended keys per token: a sequence of n tokens attends n (n + 1) / 2 pairs.
    let (pairs, tokens) = sequences.iter().fold((0.0, 0.0), |(p, t), s| {
        let n = s.input_ids.len() as f64;
        (p + n * (n + 1.0) / 2.0, t + n)
    });
    let attention = 12.0 * q * c.layers as f64 * pairs / tokens;
    per_weight * matmul + attention
}

/// What Kiln's timed steps measured.
struct KilnSteps {
    step_s: f64,
    /// The host's time to queue a step (median): at or above `step_s`, the host sets the pace.
    submit_s: f64,
    tokens_per_s: f64,
    grad_norm: f64,
    first_loss: f64,
    last_loss: f64,
}

/// Runs Kiln's warm-up and timed steps of `mode`, one queued ahead of the one being read; as
/// one rank of `dp` when given (each rank trains one micro-batch of `batch` x `seq` a step).
fn kiln_steps(
    model: Model,
    dir: &Path,
    mode: &str,
    args: &TrainBenchArgs,
    sequences: &[Sequence],
    random: Option<&ModelConfig>,
    dp: Option<&Ranks>,
) -> Result<KilnSteps, String> {
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
        max_seq_len: args.micro_batch_tokens.unwrap_or(tokens),
        tokens_per_step: tokens * dp.map_or(1, |d| d.2),
        length: Length::Steps(args.steps + 2),
        warmup_steps: Some(0),
        seed: 1,
        recompute: args.recompute,
        eval_every: 0,
        save_every: 0,
        keep: 0,
    };
    let examples = Examples::from_sequences(sequences).map_err(|e| e.to_string())?;
    let mut trainer = match random {
        Some(config) => Trainer::with_masters(
            model,
            dir,
            |name| Ok(random_tensor(config, name)),
            options,
            examples,
            None,
        ),
        None => Trainer::new(model, dir, options, examples, None),
    }
    .map_err(|e| e.to_string())?;
    if let Some((comm, _, _)) = dp {
        trainer
            .set_data_parallel(DataParallel::new(comm.clone(), args.zero))
            .map_err(|e| e.to_string())?;
    }
    let mut metrics = vec![];
    let mut submit_s = vec![];
    let mut pending: Option<PendingStep> = None;
    let mut host_profile = None;
    let mut reports = (None, None);
    // A step's time runs from the previous step's collect to its own (`Trainer::collect`). On
    // a CPU, submitting a step runs it, so each step's interval holds the next one's submit:
    // one more step after the timed ones gives the last of them its time (it is not counted).
    let submitted = args.steps + 2;
    for i in 0..=submitted {
        // Queue step i + 1 (1-based) before reading step i.
        if i == 1 {
            // KILN_PROFILE and KILN_HOST_PROFILE cover the timed steps (2 on) exactly: step 1
            // (the warm-up) is queued by now, step 2 not yet.
            kiln::runtime::profile::reset();
            host_profile = super::host_profile::HostProfile::start();
        }
        if i == args.steps + 1 {
            // Every timed step is queued; the one after them is not profiled.
            reports = (
                host_profile.take().map(|p| p.report()),
                kiln::runtime::profile::enabled().then(kiln::runtime::profile::report),
            );
        }
        let next = if i < submitted {
            let start = std::time::Instant::now();
            let step = trainer.submit().map_err(|e| e.to_string())?;
            if (1..=args.steps).contains(&i) {
                submit_s.push(start.elapsed().as_secs_f64());
            }
            Some(step)
        } else {
            None
        };
        if let Some(done) = pending.take() {
            let m = trainer.collect(done).map_err(|e| e.to_string())?;
            if !(m.grad_norm.is_finite() && m.grad_norm > 0.0) || m.skipped {
                return Err(format!(
                    "kiln {mode}: step {} has gradient norm {} (skipped: {})",
                    m.step, m.grad_norm, m.skipped
                ));
            }
            metrics.push(m);
        }
        pending = next;
    }
    if let Some(report) = reports.0 {
        eprintln!("kiln {mode}: the host's CPU time in the timed steps\n{report}");
    }
    if let Some(report) = reports.1 {
        eprintln!(
            "kiln {mode}: where the {} timed steps went (KILN_PROFILE)\n{report}",
            args.steps
        );
    }
    let timed = &metrics[1..=args.steps];
    let median = |mut x: Vec<f64>| {
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    Ok(KilnSteps {
        step_s: median(
            timed
                .iter()
                .map(|m| m.input_tokens as f64 / m.tokens_per_s)
                .collect(),
        ),
        tokens_per_s: median(timed.iter().map(|m| m.tokens_per_s).collect()),
        submit_s: median(submit_s),
        grad_norm: metrics.last().map_or(0.0, |m| m.grad_norm),
        first_loss: metrics[0].loss,
        last_loss: metrics.last().map_or(0.0, |m| m.loss),
    })
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

/// Writes `dir/model.safetensors` for `dir/config.json` with [`random_tensor`]'s weights.
fn random_model(dir: &Path) -> Result<(), String> {
    let config = ModelConfig::load(dir).map_err(|e| e.to_string())?;
    let tensors: Vec<(String, HostTensor)> = config
        .parameters()
        .into_iter()
        .map(|(name, _)| {
            let t = random_tensor(&config, &name);
            (name, t)
        })
        .collect();
    let named: Vec<(&str, &HostTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    kiln::models::weights::save(
        dir.join("model.safetensors"),
        &named,
        kiln::models::weights::SaveDtype::F32,
        &Default::default(),
    )
    .map_err(|e| e.to_string())
}

/// `name`'s tensor of a random model of `config`, as the peers' speed runs use: uniform of
/// standard deviation 0.02 (half-width 0.02 x sqrt 3), norms 1, seeded by the name.
fn random_tensor(config: &ModelConfig, name: &str) -> HostTensor {
    let shape = config
        .parameters()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s)
        .unwrap_or_default();
    let seed = name
        .bytes()
        .fold(5u64, |h, b| kiln::models::rng::mix(h ^ b as u64));
    kiln::models::random_init::random_tensor(&shape, name, seed, 0.02 * 3f32.sqrt())
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

//! `kiln info --model DIR`: what a model is (architecture, shapes, parameters) and the memory a
//! full or LoRA fine-tune of it needs, per device and precision.

use std::fmt::Write as _;
use std::path::PathBuf;

use kiln::models::adapters::{LoraSpec, Target};
use kiln::models::config::ModelConfig;
use kiln::models::memory::{estimate, host_available, human, lora_parameters};
use kiln::models::precision::Precision;

/// The arguments of `kiln info`.
#[derive(clap::Args)]
pub struct InfoArgs {
    /// A Hugging Face model folder.
    #[arg(long)]
    model: PathBuf,
    /// Tokens per optimizer step (micro-batches hold at most --max-seq-len of them).
    #[arg(long, default_value_t = 8192)]
    tokens_per_step: usize,
    #[arg(long, default_value_t = 2048)]
    max_seq_len: usize,
    /// The LoRA rank of the LoRA rows (all 7 projections).
    #[arg(long, default_value_t = 16)]
    lora_rank: usize,
}

pub fn run(args: InfoArgs) -> Result<String, String> {
    let config = ModelConfig::load(args.model.join("config.json")).map_err(|e| e.to_string())?;
    let mut out = String::new();
    let params = config.parameter_count();
    writeln!(
        out,
        "{}: {:?}, {} layers, hidden {}, intermediate {}, {} heads ({} key/value) of {}, \
         vocabulary {}{}",
        args.model.display(),
        config.architecture,
        config.layers,
        config.hidden,
        config.intermediate,
        config.heads,
        config.kv_heads,
        config.head_dim,
        config.vocab,
        if config.tie_word_embeddings {
            ", tied embeddings"
        } else {
            ""
        }
    )
    .unwrap();
    let spec = LoraSpec {
        rank: args.lora_rank,
        alpha: 2.0 * args.lora_rank as f64,
        rslora: false,
        dropout: 0.0,
        targets: Target::ALL.to_vec(),
    };
    writeln!(
        out,
        "parameters: {params} ({:.1} M); LoRA r{} on all 7 projections trains {} ({:.2}% of them)",
        params as f64 / 1e6,
        args.lora_rank,
        lora_parameters(&config, &spec),
        100.0 * lora_parameters(&config, &spec) as f64 / params as f64
    )
    .unwrap();
    let tokens = args.max_seq_len.min(args.tokens_per_step).max(1);
    // The loss's workspace is larger on a GPU; the table is for the device training would use.
    let gpu = kiln::runtime::Device::cuda(0).is_ok();
    writeln!(
        out,
        "\nmemory to train on the {}, micro-batches of {tokens} tokens (--tokens-per-step {} \
         does not change it: micro-batches run one after another):",
        if gpu { "GPU" } else { "CPU" },
        args.tokens_per_step
    )
    .unwrap();
    writeln!(
        out,
        "  {:<12} {:<10} {:<9} {:>10} {:>10} {:>10} {:>12} {:>10}",
        "mode", "precision", "recompute", "weights", "grads", "optimizer", "activations", "total"
    )
    .unwrap();
    for (mode, lora) in [("full", None), ("LoRA", Some(&spec))] {
        for precision in [Precision::Bf16, Precision::F32] {
            for recompute in [false, true] {
                let e = estimate(&config, precision, lora, tokens, recompute, gpu);
                writeln!(
                    out,
                    "  {:<12} {:<10} {:<9} {:>10} {:>10} {:>10} {:>12} {:>10}",
                    mode,
                    precision.to_string(),
                    if recompute { "yes" } else { "no" },
                    human(e.weights),
                    human(e.gradients),
                    human(e.optimizer),
                    human(e.activations + e.workspace),
                    human(e.total())
                )
                .unwrap();
            }
        }
    }
    writeln!(out, "\ndevices:").unwrap();
    match host_available() {
        Some(bytes) => writeln!(out, "  cpu: {} available", human(bytes)).unwrap(),
        None => writeln!(out, "  cpu: available memory unknown").unwrap(),
    }
    for ordinal in 0.. {
        match kiln::runtime::Device::cuda(ordinal) {
            Ok(gpu) => {
                let memory = match gpu.memory() {
                    Ok(Some((free, total))) => {
                        format!("{} free of {}", human(free as u64), human(total as u64))
                    }
                    _ => "memory unknown".into(),
                };
                writeln!(
                    out,
                    "  {gpu}: {}, {memory} (train in bf16 there)",
                    gpu.name()
                )
                .unwrap()
            }
            Err(_) => break,
        }
    }
    Ok(out)
}

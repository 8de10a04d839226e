//! How much memory a fine-tune needs: an estimate from the config, the mode and the shapes of a
//! micro-batch, broken down the way the trainer holds it (one place owns parameters, one owns
//! activations). It counts what Kiln allocates, not allocator slack, so treat it as a floor.

use crate::adapters::{LoraSpec, Target};
use crate::config::ModelConfig;
use crate::precision::Precision;

/// The bytes of each part of a training run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// The weights the model computes with (frozen base or compute copy), and for full
    /// fine-tuning the f32 masters.
    pub weights: u64,
    /// The trained parameters' f32 gradients.
    pub gradients: u64,
    /// AdamW's two f32 moments per trained parameter (LoRA: and the adapters themselves).
    pub optimizer: u64,
    /// What the forward keeps for the backward over one micro-batch, and the backward's
    /// largest temporaries.
    pub activations: u64,
    /// The loss's logits workspace.
    pub workspace: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.weights + self.gradients + self.optimizer + self.activations + self.workspace
    }
}

/// The cut cross-entropy's logits workspace budget: 128 MiB on the CPU (where it stays near the
/// caches), 1 GiB on a GPU (fewer, larger lm_head GEMMs); `KILN_CE_WORKSPACE_MIB` overrides it.
pub fn loss_workspace(gpu: bool) -> u64 {
    let set = std::env::var("KILN_CE_WORKSPACE_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&m| m > 0);
    match set {
        Some(mib) => mib << 20,
        None if gpu => 1 << 30,
        None => 128 << 20,
    }
}

/// The trained parameters of LoRA `spec` on `config`.
pub fn lora_parameters(config: &ModelConfig, spec: &LoraSpec) -> u64 {
    let per_layer: usize = spec
        .targets
        .iter()
        .map(|t: &Target| {
            let [out, inp] = t.shape(config);
            spec.rank * (out + inp)
        })
        .sum();
    (per_layer * config.layers) as u64
}

/// The estimate for training `config` in `precision` with micro-batches of `tokens` tokens, on
/// a GPU or the CPU: full fine-tuning when `lora` is `None`; `recompute` keeps only each
/// block's input.
pub fn estimate(
    config: &ModelConfig,
    precision: Precision,
    lora: Option<&LoraSpec>,
    tokens: usize,
    recompute: bool,
    gpu: bool,
) -> MemoryEstimate {
    let workspace = loss_workspace(gpu);
    let bytes = precision.dtype().size_bytes() as u64;
    let params = config.parameter_count() as u64;
    let (h, i, layers) = (
        config.hidden as u64,
        config.intermediate as u64,
        config.layers as u64,
    );
    let q = (config.heads * config.head_dim) as u64;
    let kv = (config.kv_heads * config.head_dim) as u64;
    let t = tokens as u64;
    // Per token and block: the input, both norms' outputs, the residual after attention
    // (4 x hidden), q, k, v and the attention output, gate, up and their product.
    let per_block = (4 * h + 2 * q + 2 * kv + 3 * i) * bytes;
    let kept = if recompute {
        layers * t * h * bytes + t * per_block
    } else {
        layers * t * per_block
    };
    // The backward's temporaries: a few [tokens, intermediate] f32 gradients at once.
    let temporaries = 4 * t * i * 4;
    let activations = kept + temporaries + t * h * 4 * 2;
    match lora {
        None => MemoryEstimate {
            weights: params * bytes + params * 4,
            gradients: params * 4,
            optimizer: params * 8,
            activations,
            workspace,
        },
        Some(spec) => {
            let adapters = lora_parameters(config, spec);
            let adapter_acts = layers * t * (spec.rank * spec.targets.len()) as u64 * bytes;
            MemoryEstimate {
                weights: params * bytes + adapters * bytes,
                gradients: adapters * 4,
                optimizer: adapters * 12,
                activations: activations + adapter_acts,
                workspace,
            }
        }
    }
}

/// The host's available memory (`MemAvailable` of `/proc/meminfo`), where the system says.
pub fn host_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `bytes` as "1.23 GiB" / "456 MiB".
pub fn human(bytes: u64) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.2} GiB")
    } else {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

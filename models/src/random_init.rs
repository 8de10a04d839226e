//! Seeded random weights for a config: what speed runs, examples and tests train when no real
//! checkpoint is wanted (the peers' speed runs use random weights too).

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::ModelConfig;
use rayon::prelude::*;

use crate::rng::{derive, SplitMix64};
use crate::weights::{save, SaveDtype};
use crate::{HostTensor, Result};

/// Every parameter of `config` (Hugging Face names, in `config.parameters()` order): norm
/// weights 1, everything else uniform in `[-half_width, half_width)`, drawn from `seed`.
pub fn random_tensors(
    config: &ModelConfig,
    seed: u64,
    half_width: f32,
) -> Vec<(String, HostTensor)> {
    let mut rng = SplitMix64::new(seed);
    config
        .parameters()
        .into_iter()
        .map(|(name, shape)| {
            let t = fill(&shape, &name, &mut rng, half_width);
            (name, t)
        })
        .collect()
}

/// One tensor of shape `shape` named `name`, distributed as [`random_tensors`] draws it, from
/// its own `seed`: for models too large to draw whole on the host. Drawn in parallel, in
/// chunks of 2^20 elements with seeds derived from `seed`, so the result does not depend on
/// the number of threads.
pub fn random_tensor(shape: &[usize], name: &str, seed: u64, half_width: f32) -> HostTensor {
    const CHUNK: usize = 1 << 20;
    let len: usize = shape.iter().product();
    let chunks: Vec<Vec<f32>> = (0..len.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let n = CHUNK.min(len - c * CHUNK);
            let mut rng = SplitMix64::new(derive(seed, &[c as u64]));
            fill(&[n], name, &mut rng, half_width).data
        })
        .collect();
    HostTensor::new(shape.to_vec(), chunks.concat())
}

fn fill(shape: &[usize], name: &str, rng: &mut SplitMix64, half_width: f32) -> HostTensor {
    let norm = name.ends_with("norm.weight");
    let data = (0..shape.iter().product::<usize>())
        .map(|_| {
            if norm {
                1.0
            } else {
                let u = rng.below(1 << 24) as f32 / (1 << 24) as f32 - 0.5;
                2.0 * half_width * u
            }
        })
        .collect();
    HostTensor::new(shape.to_vec(), data)
}

/// Writes `dir/model.safetensors` (f32) with [`random_tensors`] of `dir/config.json`.
pub fn save_random_model(dir: &Path, seed: u64, half_width: f32) -> Result<()> {
    let config = ModelConfig::load(dir.join("config.json"))?;
    let tensors = random_tensors(&config, seed, half_width);
    let named: Vec<(&str, &HostTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save(
        dir.join("model.safetensors"),
        &named,
        SaveDtype::F32,
        &BTreeMap::new(),
    )
}

//! PEFT LoRA adapters, for inference: read `adapter_config.json` and
//! `adapter_model.safetensors` and merge `W += scale · B A` into the weights they target
//! (`scale = lora_alpha / r`, or `lora_alpha / sqrt(r)` with `use_rslora`). Training adapters
//! (kept apart from the frozen base) is the trainer's business.

use std::path::Path;

use serde_json::Value;

use crate::model::Model;
use crate::precision::{download, upload};
use crate::weights::SafeTensors;
use crate::{Error, HostTensor, Result};

/// What an adapter's `adapter_config.json` says that the merge needs.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterConfig {
    pub rank: usize,
    pub alpha: f64,
    pub rslora: bool,
}

impl AdapterConfig {
    /// `scale` of `W += scale · B A`.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// Reads `dir/adapter_config.json`.
    pub fn load(dir: &Path) -> Result<AdapterConfig> {
        let path = dir.join("adapter_config.json");
        let at = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&at, format!("invalid JSON: {e}")))?;
        if let Some(kind) = v.get("peft_type").and_then(Value::as_str) {
            if kind != "LORA" {
                return Err(Error::unsupported(
                    &at,
                    format!("peft_type {kind}: only LORA adapters"),
                ));
            }
        }
        let rank = v
            .get("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .ok_or_else(|| Error::format(&at, "`r` must be a positive integer"))?
            as usize;
        let alpha = v
            .get("lora_alpha")
            .and_then(Value::as_f64)
            .ok_or_else(|| Error::format(&at, "`lora_alpha` must be a number"))?;
        let flag = |key: &str| v.get(key).and_then(Value::as_bool).unwrap_or(false);
        if flag("fan_in_fan_out") {
            return Err(Error::unsupported(
                &at,
                "`fan_in_fan_out: true` (Conv1D-style layers)",
            ));
        }
        if flag("use_dora") {
            return Err(Error::unsupported(&at, "DoRA adapters (`use_dora: true`)"));
        }
        match v.get("bias").and_then(Value::as_str) {
            None | Some("none") => {}
            Some(other) => {
                return Err(Error::unsupported(
                    &at,
                    format!("`bias: {other}`: only `none`"),
                ));
            }
        }
        if flag("lora_bias") {
            return Err(Error::unsupported(
                &at,
                "`lora_bias: true` (trained biases)",
            ));
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if v.get(key)
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
            {
                return Err(Error::unsupported(
                    &at,
                    format!("`{key}` (per-module ranks or alphas)"),
                ));
            }
        }
        if v.get("modules_to_save").is_some_and(|m| !m.is_null()) {
            return Err(Error::unsupported(
                &at,
                "`modules_to_save` (fully trained modules)",
            ));
        }
        Ok(AdapterConfig {
            rank,
            alpha,
            rslora: flag("use_rslora"),
        })
    }
}

/// The model weight a PEFT tensor name adapts, and whether the tensor is `A` or `B`:
/// `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` adapts
/// `model.layers.3.self_attn.q_proj.weight`.
fn target(name: &str) -> Option<(String, bool)> {
    let rest = name.strip_prefix("base_model.model.")?;
    for (suffix, is_a) in [(".lora_A.weight", true), (".lora_B.weight", false)] {
        if let Some(module) = rest.strip_suffix(suffix) {
            return Some((format!("{module}.weight"), is_a));
        }
    }
    None
}

impl Model {
    /// Merges the LoRA adapter in `dir` into the weights it targets.
    pub fn merge_adapter(&mut self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let config = AdapterConfig::load(dir)?;
        let path = dir.join("adapter_model.safetensors");
        let tensors = SafeTensors::open(&path)?;
        let file = path.display().to_string();
        let mut pairs: Vec<(String, Option<String>, Option<String>)> = vec![];
        let names: Vec<String> = tensors.names().map(str::to_string).collect();
        for name in names {
            let (weight, is_a) = target(&name).ok_or_else(|| {
                Error::unsupported(
                    format!("{file}: tensor `{name}`"),
                    "not a LoRA A or B matrix of a linear layer",
                )
            })?;
            let entry = match pairs.iter_mut().find(|(w, ..)| *w == weight) {
                Some(entry) => entry,
                None => {
                    pairs.push((weight, None, None));
                    pairs.last_mut().expect("just pushed")
                }
            };
            *if is_a { &mut entry.1 } else { &mut entry.2 } = Some(name);
        }
        // Every pair is read and checked before any weight changes, so a bad adapter leaves
        // the model as it was.
        let parameters = self.config.parameters();
        let mut merges = vec![];
        for (weight, a, b) in pairs {
            let at = format!("{file}: `{weight}`");
            let (Some(a), Some(b)) = (a, b) else {
                return Err(Error::format(at, "has only one of lora_A and lora_B"));
            };
            let index = parameters
                .iter()
                .position(|(n, shape)| *n == weight && shape.len() == 2)
                .ok_or_else(|| Error::format(&at, "the model has no such linear weight"))?;
            let (out, inp) = (parameters[index].1[0], parameters[index].1[1]);
            let (a, b) = (tensors.get(&a)?, tensors.get(&b)?);
            let r = config.rank;
            if a.shape != [r, inp] || b.shape != [out, r] {
                return Err(Error::format(
                    at,
                    format!(
                        "lora_A {:?} and lora_B {:?} do not fit rank {r} and weight [{out}, {inp}]",
                        a.shape, b.shape
                    ),
                ));
            }
            merges.push((index, a, b));
        }
        let device = self.ops().device().clone();
        let scale = config.scale() as f32;
        let r = config.rank;
        for (index, a, b) in merges {
            let (out, inp) = (b.shape[0], a.shape[1]);
            let buffer = &mut *self.weights.all_mut()[index];
            let mut w = download(buffer)?;
            // W[o, i] += scale · Σ_k B[o, k] A[k, i]: once per load, on the host, in f32.
            for o in 0..out {
                for k in 0..r {
                    let bk = scale * b.data[o * r + k];
                    let row = &a.data[k * inp..(k + 1) * inp];
                    for (wi, ai) in w[o * inp..(o + 1) * inp].iter_mut().zip(row) {
                        *wi += bk * ai;
                    }
                }
            }
            *buffer = upload(&device, &HostTensor::new(vec![out, inp], w), buffer.dtype())?;
        }
        Ok(())
    }
}

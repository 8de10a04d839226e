//! Trainable LoRA adapters: for each adapted projection `W [out, in]` of each layer, `A [r, in]`
//! and `B [out, r]`, so the layer computes `y = x Wᵀ + scale · (dropout(x) Aᵀ) Bᵀ` over a frozen
//! `W`. [`Lora`] holds one set of tensors in the structure of the model (the adapters the model
//! computes with, their f32 masters, or their gradients); names are PEFT's, so saving and loading
//! an adapter folder needs no second table.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde_json::json;

use crate::config::ModelConfig;
use crate::lora::AdapterConfig;
use crate::rng::SplitMix64;
use crate::weights::{self, SafeTensors, SaveDtype};
use crate::{Error, HostTensor, Result};

/// A projection of a decoder layer that can carry an adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    /// All seven, in the order layers hold them.
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// The module's name inside a layer, as Hugging Face and PEFT write it.
    pub fn module(self) -> &'static str {
        match self {
            Target::Q => "self_attn.q_proj",
            Target::K => "self_attn.k_proj",
            Target::V => "self_attn.v_proj",
            Target::O => "self_attn.o_proj",
            Target::Gate => "mlp.gate_proj",
            Target::Up => "mlp.up_proj",
            Target::Down => "mlp.down_proj",
        }
    }

    /// The short name of the command line (`q`, `gate`, ...).
    pub fn short(self) -> &'static str {
        match self {
            Target::Q => "q",
            Target::K => "k",
            Target::V => "v",
            Target::O => "o",
            Target::Gate => "gate",
            Target::Up => "up",
            Target::Down => "down",
        }
    }

    /// PEFT's `target_modules` entry (`q_proj`, ...).
    pub fn peft_name(self) -> &'static str {
        self.module().rsplit('.').next().unwrap_or_default()
    }

    fn index(self) -> usize {
        self as usize
    }

    /// `[out, in]` of the projection in `config`.
    pub fn shape(self, config: &ModelConfig) -> [usize; 2] {
        let (h, i) = (config.hidden, config.intermediate);
        let (q, kv) = (
            config.heads * config.head_dim,
            config.kv_heads * config.head_dim,
        );
        match self {
            Target::Q => [q, h],
            Target::K | Target::V => [kv, h],
            Target::O => [h, q],
            Target::Gate | Target::Up => [i, h],
            Target::Down => [h, i],
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

impl FromStr for Target {
    type Err = String;

    /// `q`, `q_proj` or `self_attn.q_proj` (and so on for the seven).
    fn from_str(s: &str) -> Result<Target, String> {
        Target::ALL
            .into_iter()
            .find(|t| s == t.short() || s == t.peft_name() || s == t.module())
            .ok_or_else(|| {
                format!("unknown LoRA target `{s}`: expected some of q, k, v, o, gate, up, down")
            })
    }
}

/// The shape and scaling of a set of adapters.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    /// rsLoRA: scale by `alpha / sqrt(rank)` instead of `alpha / rank`.
    pub rslora: bool,
    /// Dropout probability on each adapter's input (training only).
    pub dropout: f32,
    /// The adapted projections, sorted, without repeats.
    pub targets: Vec<Target>,
}

impl LoraSpec {
    /// Checks the values a user gives.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::Invalid("LoRA rank must be at least 1".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::Invalid(format!(
                "LoRA alpha must be a positive number, not {}",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Invalid(format!(
                "LoRA dropout must be in [0, 1), not {}",
                self.dropout
            )));
        }
        if self.targets.is_empty() {
            return Err(Error::Invalid(
                "LoRA needs at least one target module".into(),
            ));
        }
        Ok(())
    }

    /// `scale` of `y += scale · B A x`.
    pub fn scale(&self) -> f64 {
        AdapterConfig {
            rank: self.rank,
            alpha: self.alpha,
            rslora: self.rslora,
        }
        .scale()
    }
}

/// The `A` and `B` of one adapted projection.
#[derive(Debug)]
pub struct LoraPair<B> {
    /// `[rank, in]`.
    pub a: B,
    /// `[out, rank]`.
    pub b: B,
}

/// A layer's adapters, by [`Target`].
#[derive(Debug)]
pub struct LayerLora<B> {
    pairs: [Option<LoraPair<B>>; 7],
}

impl<B> LayerLora<B> {
    /// The adapter of `target`, if it has one.
    pub fn get(&self, target: Target) -> Option<&LoraPair<B>> {
        self.pairs[target.index()].as_ref()
    }

    pub fn get_mut(&mut self, target: Target) -> Option<&mut LoraPair<B>> {
        self.pairs[target.index()].as_mut()
    }
}

/// Adapters for every layer of a model.
#[derive(Debug)]
pub struct Lora<B> {
    pub spec: LoraSpec,
    pub layers: Vec<LayerLora<B>>,
}

/// PEFT's name of an adapter tensor: `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`.
pub fn peft_name(layer: usize, target: Target, is_a: bool) -> String {
    let which = if is_a { "lora_A" } else { "lora_B" };
    format!(
        "base_model.model.model.layers.{layer}.{}.{which}.weight",
        target.module()
    )
}

impl<B> Lora<B> {
    /// Builds every tensor with `make(peft_name, shape, is_a)`, layer by layer, A before B.
    pub fn build(
        config: &ModelConfig,
        spec: &LoraSpec,
        mut make: impl FnMut(&str, [usize; 2], bool) -> Result<B>,
    ) -> Result<Lora<B>> {
        let r = spec.rank;
        let mut layers = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let mut pairs: [Option<LoraPair<B>>; 7] = Default::default();
            for &t in &spec.targets {
                let [out, inp] = t.shape(config);
                let a = make(&peft_name(l, t, true), [r, inp], true)?;
                let b = make(&peft_name(l, t, false), [out, r], false)?;
                pairs[t.index()] = Some(LoraPair { a, b });
            }
            layers.push(LayerLora { pairs });
        }
        Ok(Lora {
            spec: spec.clone(),
            layers,
        })
    }

    /// Every tensor with its PEFT name, in [`Lora::build`]'s order.
    pub fn named(&self) -> Vec<(String, &B)> {
        let mut out = vec![];
        for (l, layer) in self.layers.iter().enumerate() {
            for t in Target::ALL {
                if let Some(p) = layer.get(t) {
                    out.push((peft_name(l, t, true), &p.a));
                    out.push((peft_name(l, t, false), &p.b));
                }
            }
        }
        out
    }

    /// Every tensor, mutably, in the order of [`Lora::named`].
    pub fn all_mut(&mut self) -> Vec<&mut B> {
        let mut out = vec![];
        for layer in &mut self.layers {
            for p in layer.pairs.iter_mut().flatten() {
                out.push(&mut p.a);
                out.push(&mut p.b);
            }
        }
        out
    }
}

impl Lora<HostTensor> {
    /// Fresh adapters initialised as PEFT does: `A` Kaiming-uniform (PyTorch's default for a
    /// linear layer, `a = √5`: uniform in `±1/√in`), `B` zero, so training starts from the base
    /// model exactly.
    pub fn init(config: &ModelConfig, spec: &LoraSpec, rng: &mut SplitMix64) -> Result<Self> {
        spec.validate()?;
        Lora::build(config, spec, |_, [rows, cols], is_a| {
            let data = if is_a {
                let bound = 1.0 / (cols as f64).sqrt();
                (0..rows * cols)
                    .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                    .collect()
            } else {
                vec![0.0; rows * cols]
            };
            Ok(HostTensor::new(vec![rows, cols], data))
        })
    }

    /// Reads a PEFT adapter folder (`adapter_config.json`, `adapter_model.safetensors`) for
    /// `config`. The targets come from the tensors present; every tensor must be a LoRA A or B
    /// of one of the seven projections, in pairs, of the configured rank; `dropout` is the
    /// training's (PEFT's `lora_dropout` is taken when `None`).
    pub fn load_peft(config: &ModelConfig, dir: &Path, dropout: Option<f32>) -> Result<Self> {
        let adapter = AdapterConfig::load(dir)?;
        let path = dir.join("adapter_model.safetensors");
        let file = path.display().to_string();
        let tensors = SafeTensors::open(&path)?;
        let mut targets: Vec<Target> = vec![];
        for name in tensors.names() {
            let target = Target::ALL.into_iter().find(|&t| {
                (0..config.layers)
                    .any(|l| name == peft_name(l, t, true) || name == peft_name(l, t, false))
            });
            match target {
                Some(t) if !targets.contains(&t) => targets.push(t),
                Some(_) => {}
                None => {
                    return Err(Error::unsupported(
                        format!("{file}: tensor `{name}`"),
                        format!(
                            "not the LoRA A or B of a q/k/v/o/gate/up/down projection of \
                             layers 0..{}",
                            config.layers
                        ),
                    ))
                }
            }
        }
        targets.sort();
        let lora_dropout = read_dropout(dir)?;
        let spec = LoraSpec {
            rank: adapter.rank,
            alpha: adapter.alpha,
            rslora: adapter.rslora,
            dropout: dropout.unwrap_or(lora_dropout),
            targets,
        };
        spec.validate().map_err(|e| {
            Error::format(
                dir.join("adapter_config.json").display().to_string(),
                e.to_string(),
            )
        })?;
        Lora::build(config, &spec, |name, shape, _| {
            if !tensors.contains(name) {
                return Err(Error::format(
                    &file,
                    format!("`{name}` is missing (adapters come in A/B pairs on every layer)"),
                ));
            }
            let t = tensors.get(name)?;
            if t.shape != shape {
                return Err(Error::format(
                    format!("{file}: tensor `{name}`"),
                    format!("shape {:?}, rank {} implies {shape:?}", t.shape, spec.rank),
                ));
            }
            Ok(t)
        })
    }

    /// Writes the adapters as a PEFT folder's two files into `dir` (which exists):
    /// `adapter_config.json` and `adapter_model.safetensors` (f32).
    pub fn save_peft(&self, dir: &Path, base_model: Option<&str>) -> Result<()> {
        let spec = &self.spec;
        let config = json!({
            "alpha_pattern": {},
            "base_model_name_or_path": base_model,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_to_transform": null,
            "lora_alpha": spec.alpha,
            "lora_dropout": spec.dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": spec.rank,
            "rank_pattern": {},
            "target_modules": spec.targets.iter().map(|t| t.peft_name()).collect::<Vec<_>>(),
            "task_type": "CAUSAL_LM",
            "use_dora": false,
            "use_rslora": spec.rslora,
        });
        let path = dir.join("adapter_config.json");
        let text = serde_json::to_string_pretty(&config).expect("a JSON value prints");
        std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))?;
        let named = self.named();
        let tensors: Vec<(&str, &HostTensor)> =
            named.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        weights::save(
            dir.join("adapter_model.safetensors"),
            &tensors,
            SaveDtype::F32,
            &BTreeMap::new(),
        )
    }
}

/// PEFT's `lora_dropout` from `dir/adapter_config.json` (0 when absent).
fn read_dropout(dir: &Path) -> Result<f32> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(path.display().to_string(), format!("invalid JSON: {e}")))?;
    Ok(v.get("lora_dropout")
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0) as f32)
}

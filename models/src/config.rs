//! [`ModelConfig`]: a Hugging Face `config.json` of a Qwen2, Llama or Mistral model, read and
//! checked once so that the model code can trust every size in it.
//!
//! Every error names the file and the key. What Kiln cannot run (a sliding attention window, a
//! rope scaling other than Llama 3's, biases on the output projection) is refused here with an
//! [`Error::Unsupported`] rather than silently run wrong.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::{Error, Result};

/// The model families Kiln runs. All three are decoder-only transformers with RMSNorm, rotary
/// position embeddings, grouped-query attention and a SwiGLU MLP; they differ in biases and
/// defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// `model_type: "qwen2"`: biases on the q, k and v projections.
    Qwen2,
    /// `model_type: "llama"`.
    Llama,
    /// `model_type: "mistral"` (without a sliding window: Mistral 7B v0.2 and later).
    Mistral,
}

impl Architecture {
    /// Every supported architecture, in the order error messages list them.
    pub const ALL: [Architecture; 3] = [
        Architecture::Qwen2,
        Architecture::Llama,
        Architecture::Mistral,
    ];

    /// The `model_type` string of `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Qwen2 => "qwen2",
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
        }
    }

    /// The class name `config.json` lists under `architectures`.
    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
        }
    }

    /// The architecture whose `model_type` is `name`, if Kiln supports it.
    pub fn from_model_type(name: &str) -> Option<Architecture> {
        Architecture::ALL
            .into_iter()
            .find(|a| a.model_type() == name)
    }
}

/// Llama 3's rope scaling (`rope_type: "llama3"`): low frequencies are divided by `factor`,
/// high ones kept, with a smooth ramp between the two wavelength bounds.
#[derive(Clone, Debug, PartialEq)]
pub struct Llama3RopeScaling {
    /// How much low frequencies are divided by.
    pub factor: f64,
    /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
    pub low_freq_factor: f64,
    /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
    pub high_freq_factor: f64,
    /// The context length the model was first trained for.
    pub original_max_position_embeddings: usize,
}

/// A rope scaling that was parsed. Only Llama 3's is known; every other type is refused when
/// the config is read.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    Llama3(Llama3RopeScaling),
}

/// A checked model configuration. Sizes are positive, `heads` is a multiple of `kv_heads` and
/// `head_dim` is even; `hidden` need not equal `heads * head_dim`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    /// `hidden_size`: the width of the residual stream.
    pub hidden: usize,
    /// `intermediate_size`: the width of the MLP.
    pub intermediate: usize,
    /// `num_hidden_layers`.
    pub layers: usize,
    /// `num_attention_heads`: query heads.
    pub heads: usize,
    /// `num_key_value_heads` (default `heads`): key and value heads, shared by
    /// `heads / kv_heads` query heads each.
    pub kv_heads: usize,
    /// `head_dim` (default `hidden / heads`).
    pub head_dim: usize,
    /// `vocab_size`: rows of the embedding and of the output projection.
    pub vocab: usize,
    /// `rope_theta` (or `rope_parameters.rope_theta`; default 10000): the rotary base.
    pub rope_theta: f64,
    /// `rope_scaling` (or the scaling part of `rope_parameters`); `None` for plain rope.
    pub rope_scaling: Option<RopeScaling>,
    /// `rms_norm_eps`.
    pub rms_norm_eps: f64,
    /// `tie_word_embeddings` (default false): the output projection is the embedding matrix,
    /// and the checkpoint has no `lm_head.weight`.
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections: always for Qwen2, for Llama with
    /// `attention_bias`, never for Mistral.
    pub qkv_bias: bool,
    /// A bias on the o projection: Llama with `attention_bias` (Qwen2 has none).
    pub o_bias: bool,
    /// `max_position_embeddings`: the longest sequence the model was trained for.
    pub max_positions: usize,
    /// `bos_token_id`, if the config has one.
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` (a number or a list in the file); empty if the config has none.
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Reads `config.json`: `path` is the file or the model folder holding it.
    pub fn load(path: impl AsRef<Path>) -> Result<ModelConfig> {
        let path = path.as_ref();
        let file = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        ModelConfig::from_json_str(&text, &file.display().to_string())
    }

    /// Parses the text of a `config.json`; `location` (usually the file's path) starts every
    /// error message.
    pub fn from_json_str(text: &str, location: &str) -> Result<ModelConfig> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::format(location, format!("invalid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(Error::format(location, "expected a JSON object"));
        };
        parse(&Keys {
            map: &map,
            location,
        })
    }

    /// The tensors a checkpoint of this model holds, by their Hugging Face names, with their
    /// shapes (`[out, in]` for projections), in a fixed order: the embedding, each layer's
    /// tensors, the final norm, then `lm_head.weight` unless the embeddings are tied.
    pub fn parameters(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, v) = (self.hidden, self.intermediate, self.vocab);
        let q = self.heads * self.head_dim;
        let kv = self.kv_heads * self.head_dim;
        let mut params = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for layer in 0..self.layers {
            let p = |name: &str, shape: Vec<usize>| (format!("model.layers.{layer}.{name}"), shape);
            params.push(p("input_layernorm.weight", vec![h]));
            params.push(p("self_attn.q_proj.weight", vec![q, h]));
            if self.qkv_bias {
                params.push(p("self_attn.q_proj.bias", vec![q]));
            }
            params.push(p("self_attn.k_proj.weight", vec![kv, h]));
            if self.qkv_bias {
                params.push(p("self_attn.k_proj.bias", vec![kv]));
            }
            params.push(p("self_attn.v_proj.weight", vec![kv, h]));
            if self.qkv_bias {
                params.push(p("self_attn.v_proj.bias", vec![kv]));
            }
            params.push(p("self_attn.o_proj.weight", vec![h, q]));
            if self.o_bias {
                params.push(p("self_attn.o_proj.bias", vec![h]));
            }
            params.push(p("post_attention_layernorm.weight", vec![h]));
            params.push(p("mlp.gate_proj.weight", vec![i, h]));
            params.push(p("mlp.up_proj.weight", vec![i, h]));
            params.push(p("mlp.down_proj.weight", vec![h, i]));
        }
        params.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            params.push(("lm_head.weight".to_string(), vec![v, h]));
        }
        params
    }

    /// The number of weights of the model (the sum over [`ModelConfig::parameters`]).
    pub fn parameter_count(&self) -> usize {
        self.parameters()
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum()
    }

    /// A Hugging Face style `config.json` for this configuration (pretty-printed), as a
    /// checkpoint writes it; [`ModelConfig::from_json_str`] reads it back to an equal config.
    pub fn to_json(&self) -> String {
        let rope_scaling = match &self.rope_scaling {
            None => Value::Null,
            Some(RopeScaling::Llama3(s)) => json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            }),
        };
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        let mut config = json!({
            "architectures": [self.architecture.hf_class()],
            "model_type": self.architecture.model_type(),
            "hidden_act": "silu",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_positions,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
        });
        let extra = match self.architecture {
            Architecture::Qwen2 => json!({"use_sliding_window": false, "sliding_window": null}),
            Architecture::Llama => json!({"attention_bias": self.o_bias, "mlp_bias": false}),
            Architecture::Mistral => json!({"sliding_window": null}),
        };
        if let (Value::Object(config), Value::Object(extra)) = (&mut config, extra) {
            config.extend(extra);
        }
        // A `json!` object always pretty-prints.
        serde_json::to_string_pretty(&config).unwrap_or_default()
    }
}

/// The keys of one JSON object, read with errors that name the file and the key.
struct Keys<'a> {
    map: &'a Map<String, Value>,
    location: &'a str,
}

impl Keys<'_> {
    /// The value of `key`, with JSON `null` read as absent.
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn error(&self, key: &str, message: impl std::fmt::Display) -> Error {
        Error::format(self.location, format!("key `{key}`: {message}"))
    }

    fn missing(&self, key: &str) -> Error {
        self.error(key, "missing")
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| self.error(key, format!("expected a non-negative integer, found {v}")))
    }

    /// A size that must be present and positive.
    fn size(&self, key: &str) -> Result<usize> {
        let n = self.opt_usize(key)?.ok_or_else(|| self.missing(key))?;
        positive(self, key, n)
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_f64()
            .map(Some)
            .ok_or_else(|| self.error(key, format!("expected a number, found {v}")))
    }

    /// A number that must be present, finite and positive.
    fn positive_f64(&self, key: &str) -> Result<f64> {
        let x = self.opt_f64(key)?.ok_or_else(|| self.missing(key))?;
        if x.is_finite() && x > 0.0 {
            Ok(x)
        } else {
            Err(self.error(key, format!("must be positive, found {x}")))
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_bool()
            .map(Some)
            .ok_or_else(|| self.error(key, format!("expected true or false, found {v}")))
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_str()
            .map(Some)
            .ok_or_else(|| self.error(key, format!("expected a string, found {v}")))
    }

    fn opt_object(&self, key: &str) -> Result<Option<&Map<String, Value>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_object()
            .map(Some)
            .ok_or_else(|| self.error(key, format!("expected an object, found {v}")))
    }

    /// A token id, or a list of them (as `eos_token_id` may be).
    fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        let token = |v: &Value| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| self.error(key, format!("expected a token id, found {v}")))
        };
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(token).collect(),
            Some(v) => Ok(vec![token(v)?]),
        }
    }
}

fn positive(keys: &Keys, key: &str, n: usize) -> Result<usize> {
    if n == 0 {
        Err(keys.error(key, "must be positive, found 0"))
    } else {
        Ok(n)
    }
}

fn parse(keys: &Keys) -> Result<ModelConfig> {
    let location = keys.location;
    let model_type = keys
        .opt_str("model_type")?
        .ok_or_else(|| keys.missing("model_type"))?;
    let architecture = Architecture::from_model_type(model_type).ok_or_else(|| {
        let supported: Vec<_> = Architecture::ALL.iter().map(|a| a.model_type()).collect();
        Error::unsupported(
            location,
            format!(
                "key `model_type`: `{model_type}` is not supported (supported: {})",
                supported.join(", ")
            ),
        )
    })?;

    if let Some(act) = keys.opt_str("hidden_act")? {
        if act != "silu" && act != "swish" {
            return Err(Error::unsupported(
                location,
                format!("key `hidden_act`: `{act}` is not supported (only silu)"),
            ));
        }
    }

    let hidden = keys.size("hidden_size")?;
    let intermediate = keys.size("intermediate_size")?;
    let layers = keys.size("num_hidden_layers")?;
    let heads = keys.size("num_attention_heads")?;
    let kv_heads = match keys.opt_usize("num_key_value_heads")? {
        Some(n) => positive(keys, "num_key_value_heads", n)?,
        None => heads,
    };
    if heads % kv_heads != 0 {
        return Err(keys.error(
            "num_key_value_heads",
            format!("{kv_heads} does not divide num_attention_heads ({heads})"),
        ));
    }
    let head_dim = match keys.opt_usize("head_dim")? {
        Some(n) => positive(keys, "head_dim", n)?,
        None if hidden % heads == 0 => hidden / heads,
        None => {
            return Err(keys.error(
                "head_dim",
                format!(
                    "missing, and hidden_size ({hidden}) is not a multiple of \
                     num_attention_heads ({heads})"
                ),
            ))
        }
    };
    if head_dim % 2 != 0 {
        return Err(keys.error(
            "head_dim",
            format!("rotary embeddings need an even head size, found {head_dim}"),
        ));
    }
    let vocab = keys.size("vocab_size")?;
    let max_positions = keys.size("max_position_embeddings")?;
    let rms_norm_eps = keys.positive_f64("rms_norm_eps")?;
    let tie_word_embeddings = keys.opt_bool("tie_word_embeddings")?.unwrap_or(false);

    // Qwen2 has q/k/v biases; Llama's `attention_bias` puts biases on q, k, v and o;
    // Hugging Face's Mistral has none whatever the config says.
    let attention_bias =
        architecture == Architecture::Llama && keys.opt_bool("attention_bias")?.unwrap_or(false);
    let qkv_bias = architecture == Architecture::Qwen2 || attention_bias;
    let o_bias = attention_bias;
    if architecture == Architecture::Llama && keys.opt_bool("mlp_bias")? == Some(true) {
        return Err(Error::unsupported(
            location,
            "key `mlp_bias`: true (biases in the MLP) is not supported",
        ));
    }

    check_sliding_window(keys, architecture, max_positions)?;
    let (rope_theta, rope_scaling) = parse_rope(keys)?;

    let bos_token_id = match keys.token_ids("bos_token_id")?.as_slice() {
        [] => None,
        [one] => Some(*one),
        _ => return Err(keys.error("bos_token_id", "expected one token id, found a list")),
    };
    let eos_token_ids = keys.token_ids("eos_token_id")?;

    Ok(ModelConfig {
        architecture,
        hidden,
        intermediate,
        layers,
        heads,
        kv_heads,
        head_dim,
        vocab,
        rope_theta,
        rope_scaling,
        rms_norm_eps,
        tie_word_embeddings,
        qkv_bias,
        o_bias,
        max_positions,
        bos_token_id,
        eos_token_ids,
    })
}

/// Refuses a sliding attention window that would change the results: Kiln attends to every
/// earlier position.
fn check_sliding_window(
    keys: &Keys,
    architecture: Architecture,
    max_positions: usize,
) -> Result<()> {
    let location = keys.location;
    match architecture {
        Architecture::Qwen2 => {
            if keys.opt_bool("use_sliding_window")? == Some(true) {
                return Err(Error::unsupported(
                    location,
                    "key `use_sliding_window`: sliding-window attention is not supported",
                ));
            }
        }
        Architecture::Mistral => {
            if let Some(window) = keys.opt_usize("sliding_window")? {
                if window < max_positions {
                    return Err(Error::unsupported(
                        location,
                        format!(
                            "key `sliding_window`: a window of {window} positions (shorter than \
                             max_position_embeddings, {max_positions}) is not supported"
                        ),
                    ));
                }
            }
        }
        Architecture::Llama => {}
    }
    Ok(())
}

/// The rotary base and scaling, from `rope_theta` and `rope_scaling` or from the newer
/// `rope_parameters` object that holds both.
fn parse_rope(keys: &Keys) -> Result<(f64, Option<RopeScaling>)> {
    let location = keys.location;
    let parameters = keys.opt_object("rope_parameters")?;
    let theta = match keys.opt_f64("rope_theta")? {
        Some(theta) => Some(("rope_theta".to_string(), theta)),
        None => match parameters {
            Some(map) => Keys {
                map,
                location: &format!("{location}: key `rope_parameters`"),
            }
            .opt_f64("rope_theta")?
            .map(|theta| ("rope_parameters.rope_theta".to_string(), theta)),
            None => None,
        },
    };
    let rope_theta = match theta {
        None => 10000.0,
        Some((_, theta)) if theta.is_finite() && theta > 0.0 => theta,
        Some((key, theta)) => {
            return Err(keys.error(&key, format!("must be positive, found {theta}")))
        }
    };

    let (key, scaling) = match keys.opt_object("rope_scaling")? {
        Some(map) => ("rope_scaling", Some(map)),
        None => ("rope_parameters", parameters),
    };
    let Some(scaling) = scaling else {
        return Ok((rope_theta, None));
    };
    let inner_location = format!("{location}: key `{key}`");
    let inner = Keys {
        map: scaling,
        location: &inner_location,
    };
    let kind = match inner.opt_str("rope_type")? {
        Some(kind) => Some(kind),
        None => inner.opt_str("type")?,
    };
    match kind {
        None | Some("default") => Ok((rope_theta, None)),
        Some("llama3") => {
            let scaling = Llama3RopeScaling {
                factor: inner.positive_f64("factor")?,
                low_freq_factor: inner.positive_f64("low_freq_factor")?,
                high_freq_factor: inner.positive_f64("high_freq_factor")?,
                original_max_position_embeddings: inner.size("original_max_position_embeddings")?,
            };
            // The ramp between the two wavelength bounds divides by their difference.
            if scaling.high_freq_factor <= scaling.low_freq_factor {
                return Err(inner.error(
                    "high_freq_factor",
                    format!(
                        "must exceed low_freq_factor ({}), found {}",
                        scaling.low_freq_factor, scaling.high_freq_factor
                    ),
                ));
            }
            Ok((rope_theta, Some(RopeScaling::Llama3(scaling))))
        }
        Some(other) => Err(Error::unsupported(
            &inner_location,
            format!("rope scaling `{other}` is not supported (supported: llama3, or none)"),
        )),
    }
}

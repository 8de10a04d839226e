//! A GGUF model's hyperparameters (`llama.*` / `qwen2.*` metadata) as a Hugging Face
//! `config.json`.

use super::metadata::{Metadata, MetadataValue};
use super::names::Arch;
use super::reader::GgufFile;
use crate::{Error, Result};
use serde_json::{json, Value};

/// The hyperparameters of a GGUF model, read from its metadata and tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    /// True when the file has no `output.weight` (the LM head is the embedding).
    pub tie_word_embeddings: bool,
    /// True when the attention projections have biases (`blk.0.attn_q.bias`).
    pub attention_bias: bool,
    pub bos_token_id: Option<usize>,
    pub eos_token_id: Option<usize>,
    /// `{"rope_type": "linear", "factor": f}` for linear rope scaling; `None` without scaling.
    pub rope_scaling: Option<Value>,
}

/// A float key's value as the shortest decimal that reads back to it: an f32 `1e-5` is
/// `1e-5`, not the f64 `9.999999747378752e-6` its bits widen to.
fn decimal(md: &Metadata, key: &str) -> Result<Option<f64>> {
    Ok(match md.get(key) {
        Some(MetadataValue::F32(v)) => Some(v.to_string().parse::<f64>().unwrap_or(f64::from(*v))),
        _ => md.get_f64(key)?,
    })
}

impl GgufModelConfig {
    /// Reads the configuration of `file`; errors name the file and the missing or bad key.
    pub fn from_gguf(file: &GgufFile) -> Result<GgufModelConfig> {
        let md = file.metadata();
        let location = file.path().display().to_string();
        let arch = Arch::from_gguf(file.architecture()?, &location)?;
        let p = arch.key_prefix();
        let key = |k: &str| format!("{p}.{k}");
        let required = |k: &str| -> Result<usize> {
            let k = key(k);
            match md.get_usize(&k)? {
                Some(0) => Err(md.error(&k, "must not be 0")),
                Some(v) => Ok(v),
                None => Err(md.error(&k, "missing")),
            }
        };
        let hidden_size = required("embedding_length")?;
        let intermediate_size = required("feed_forward_length")?;
        let num_hidden_layers = required("block_count")?;
        let num_attention_heads = required("attention.head_count")?;
        let kv_key = key("attention.head_count_kv");
        let num_key_value_heads = md.get_usize(&kv_key)?.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(md.error(
                &kv_key,
                format!(
                    "{num_key_value_heads} key-value heads do not divide {num_attention_heads} \
                     attention heads"
                ),
            ));
        }
        let head_dim = match md.get_usize(&key("attention.key_length"))? {
            Some(d) if d > 0 => d,
            _ if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            _ => {
                return Err(md.error(
                    &key("attention.head_count"),
                    format!(
                        "{num_attention_heads} heads do not divide the hidden size {hidden_size}"
                    ),
                ))
            }
        };
        let embed = file.tensor("token_embd.weight").ok_or_else(|| {
            Error::format(
                format!("{location}: tensor `token_embd.weight`"),
                "missing (every Llama/Qwen2 model has a token embedding)",
            )
        })?;
        let embed_rows = embed.dims.get(1).copied().unwrap_or(0) as usize;
        let vocab_size = match md.get_usize(&key("vocab_size"))? {
            Some(v) => v,
            None => embed_rows,
        };
        if embed.dims.len() != 2
            || embed.dims[0] as usize != hidden_size
            || embed_rows != vocab_size
        {
            return Err(Error::format(
                format!("{location}: tensor `token_embd.weight`"),
                format!(
                    "GGUF dimensions {:?}, expected [{hidden_size}, {vocab_size}] (hidden size, vocabulary)",
                    embed.dims
                ),
            ));
        }
        let rope_theta = decimal(md, &key("rope.freq_base"))?.unwrap_or(10000.0);
        let eps_key = key("attention.layer_norm_rms_epsilon");
        let rms_norm_eps = decimal(md, &eps_key)?.ok_or_else(|| md.error(&eps_key, "missing"))?;
        let max_position_embeddings = required("context_length")?;
        let rope_scaling = rope_scaling(md, p)?;
        Ok(GgufModelConfig {
            arch,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size,
            rope_theta,
            rms_norm_eps,
            max_position_embeddings,
            tie_word_embeddings: file.tensor("output.weight").is_none(),
            attention_bias: file.tensor("blk.0.attn_q.bias").is_some(),
            bos_token_id: md.get_usize("tokenizer.ggml.bos_token_id")?,
            eos_token_id: md.get_usize("tokenizer.ggml.eos_token_id")?,
            rope_scaling,
        })
    }

    /// The Hugging Face `config.json` of the model, with weights stored as f32.
    pub fn to_hf_json(&self) -> Value {
        let mut c = json!({
            "architectures": [self.arch.hf_class()],
            "model_type": self.arch.model_type(),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "rope_scaling": self.rope_scaling,
            "torch_dtype": "float32",
            "use_cache": true,
        });
        let extra = match self.arch {
            Arch::Llama => json!({ "attention_bias": self.attention_bias, "mlp_bias": false }),
            Arch::Qwen2 => json!({
                "use_sliding_window": false,
                "max_window_layers": self.num_hidden_layers,
            }),
        };
        if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
            c.extend(extra);
        }
        c
    }
}

fn rope_scaling(md: &Metadata, prefix: &str) -> Result<Option<Value>> {
    let type_key = format!("{prefix}.rope.scaling.type");
    match md.get_str(&type_key)? {
        None | Some("none") => Ok(None),
        Some("linear") => {
            let factor_key = format!("{prefix}.rope.scaling.factor");
            let factor = decimal(md, &factor_key)?
                .ok_or_else(|| md.error(&factor_key, "missing for linear rope scaling"))?;
            Ok(Some(
                json!({ "rope_type": "linear", "type": "linear", "factor": factor }),
            ))
        }
        Some(other) => Err(Error::unsupported(
            format!("{}: key `{type_key}`", md.path()),
            format!("rope scaling `{other}` is not supported (none and linear are)"),
        )),
    }
}

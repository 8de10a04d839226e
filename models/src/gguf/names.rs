//! llama.cpp's tensor names to Hugging Face's, and undoing the row permutation llama.cpp's
//! converter applies to the query and key projections of Llama models.
//!
//! convert_hf_to_gguf.py reorders the rows of `q_proj` (weight and bias) with `n_head` and of
//! `k_proj` with `n_head_kv`, so that each head's rotary pairs are adjacent (GGML's rope pairs
//! elements `2i, 2i+1`, Hugging Face's pairs `i, i + head_dim/2`): HF row `h·d + j·d/2 + i`
//! becomes GGUF row `h·d + 2i + j` (d the head dimension, i < d/2, j ∈ {0, 1}). Qwen2's
//! converter does not permute (its GGUF keeps Hugging Face's order, and llama.cpp uses NEOX rope
//! for it).

use crate::{Error, HostTensor, Result};

/// The model architectures Kiln imports from GGUF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
}

impl Arch {
    /// The architecture of `general.architecture`, or an Unsupported error naming the ones that
    /// are supported.
    pub fn from_gguf(name: &str, location: &str) -> Result<Arch> {
        match name {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            other => Err(Error::unsupported(
                format!("{location}: key `general.architecture`"),
                format!("architecture `{other}` is not supported (llama and qwen2 are)"),
            )),
        }
    }

    /// The prefix of its metadata keys (`llama.block_count`).
    pub fn key_prefix(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }

    /// Hugging Face's `model_type`.
    pub fn model_type(self) -> &'static str {
        self.key_prefix()
    }

    /// Hugging Face's model class (`architectures[0]`).
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    /// Whether llama.cpp's converter permuted the Q/K rows of this architecture.
    pub fn permutes_qk(self) -> bool {
        matches!(self, Arch::Llama)
    }
}

/// Which projection a tensor is, where that matters for the permutation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkRole {
    /// `q_proj` (permuted with the number of attention heads).
    Query,
    /// `k_proj` (permuted with the number of key-value heads).
    Key,
}

/// A GGUF tensor's Hugging Face name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HfName {
    /// The Hugging Face name (`model.layers.3.self_attn.q_proj.weight`).
    pub name: String,
    /// The layer, for tensors of a block.
    pub layer: Option<usize>,
    /// Set for the query and key projections (weights and biases).
    pub qk: Option<QkRole>,
}

/// The Hugging Face name of the llama.cpp tensor `name`, or `None` for a name Kiln does not
/// know.
pub fn hf_name(name: &str) -> Option<HfName> {
    let top = |n: &str| HfName {
        name: n.to_string(),
        layer: None,
        qk: None,
    };
    match name {
        "token_embd.weight" => return Some(top("model.embed_tokens.weight")),
        "output_norm.weight" => return Some(top("model.norm.weight")),
        "output.weight" => return Some(top("lm_head.weight")),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let layer: usize = layer.parse().ok()?;
    let (part, kind) = rest.split_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (hf, qk) = match part {
        "attn_q" => ("self_attn.q_proj", Some(QkRole::Query)),
        "attn_k" => ("self_attn.k_proj", Some(QkRole::Key)),
        "attn_v" => ("self_attn.v_proj", None),
        "attn_output" => ("self_attn.o_proj", None),
        "ffn_gate" => ("mlp.gate_proj", None),
        "ffn_up" => ("mlp.up_proj", None),
        "ffn_down" => ("mlp.down_proj", None),
        "attn_norm" => ("input_layernorm", None),
        "ffn_norm" => ("post_attention_layernorm", None),
        _ => return None,
    };
    Some(HfName {
        name: format!("model.layers.{layer}.{hf}.{kind}"),
        layer: Some(layer),
        qk,
    })
}

/// Undoes llama.cpp's Q/K row permutation for `n_heads` heads (the attention heads for
/// `q_proj`, the key-value heads for `k_proj`), on a weight `[rows, cols]` or a bias `[rows]`.
/// `location` names the tensor in the error for rows that are not whole heads of even size.
pub fn unpermute_qk(t: &HostTensor, n_heads: usize, location: &str) -> Result<HostTensor> {
    let rows = t.shape.first().copied().unwrap_or(0);
    if n_heads == 0 || rows % n_heads != 0 || (rows / n_heads) % 2 != 0 {
        return Err(Error::format(
            location,
            format!(
                "{rows} rows are not {n_heads} heads of an even size, as the Q/K permutation needs"
            ),
        ));
    }
    let row_len = t.shape[1..].iter().product::<usize>();
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut data = vec![0.0f32; t.data.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let from = h * head_dim + 2 * i + j;
                let to = h * head_dim + j * half + i;
                data[to * row_len..(to + 1) * row_len]
                    .copy_from_slice(&t.data[from * row_len..(from + 1) * row_len]);
            }
        }
    }
    Ok(HostTensor {
        shape: t.shape.clone(),
        data,
    })
}

/// The llama.cpp name of the Hugging Face tensor `name` (the inverse of [`hf_name`]), or `None`
/// for a name that has none.
pub fn gguf_name(name: &str) -> Option<String> {
    match name {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (module, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let part = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{part}.{kind}"))
}

/// llama.cpp's Q/K row permutation (the inverse of [`unpermute_qk`]), as convert_hf_to_gguf.py
/// applies it to Llama's `q_proj` (with the attention heads) and `k_proj` (with the key-value
/// heads), weights and biases: Hugging Face row `h·d + j·d/2 + i` becomes row `h·d + 2i + j`.
pub fn permute_qk(t: &HostTensor, n_heads: usize, location: &str) -> Result<HostTensor> {
    let rows = t.shape.first().copied().unwrap_or(0);
    if n_heads == 0 || rows % n_heads != 0 || (rows / n_heads) % 2 != 0 {
        return Err(Error::format(
            location,
            format!(
                "{rows} rows are not {n_heads} heads of an even size, as the Q/K permutation needs"
            ),
        ));
    }
    let row_len = t.shape[1..].iter().product::<usize>();
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut data = vec![0.0f32; t.data.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let from = h * head_dim + j * half + i;
                let to = h * head_dim + 2 * i + j;
                data[to * row_len..(to + 1) * row_len]
                    .copy_from_slice(&t.data[from * row_len..(from + 1) * row_len]);
            }
        }
    }
    Ok(HostTensor {
        shape: t.shape.clone(),
        data,
    })
}

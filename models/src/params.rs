//! [`Weights`]: every tensor of a Qwen2/Llama model, by role. The same structure holds the
//! parameters (in the compute precision) and their gradients (always f32); names are Hugging
//! Face's, so loading, saving and per-parameter reports never need a second table.

use crate::config::ModelConfig;
use crate::Result;

/// The tensors of one decoder layer.
#[derive(Debug)]
pub struct LayerWeights<B> {
    /// `input_layernorm.weight` `[hidden]`.
    pub input_norm: B,
    /// `self_attn.q_proj.weight` `[heads * head_dim, hidden]`, and its bias (Qwen2).
    pub q: B,
    pub q_bias: Option<B>,
    /// `self_attn.k_proj.weight` `[kv_heads * head_dim, hidden]`, and its bias.
    pub k: B,
    pub k_bias: Option<B>,
    /// `self_attn.v_proj.weight` `[kv_heads * head_dim, hidden]`, and its bias.
    pub v: B,
    pub v_bias: Option<B>,
    /// `self_attn.o_proj.weight` `[hidden, heads * head_dim]`, and its bias (Llama with
    /// `attention_bias`).
    pub o: B,
    pub o_bias: Option<B>,
    /// `post_attention_layernorm.weight` `[hidden]`.
    pub post_norm: B,
    /// `mlp.gate_proj.weight` and `mlp.up_proj.weight` `[intermediate, hidden]`.
    pub gate: B,
    pub up: B,
    /// `mlp.down_proj.weight` `[hidden, intermediate]`.
    pub down: B,
}

/// The tensors of a whole model.
#[derive(Debug)]
pub struct Weights<B> {
    /// `model.embed_tokens.weight` `[vocab, hidden]`; also the output projection when tied.
    pub embed: B,
    pub layers: Vec<LayerWeights<B>>,
    /// `model.norm.weight` `[hidden]`.
    pub norm: B,
    /// `lm_head.weight` `[vocab, hidden]`; `None` when the embeddings are tied.
    pub lm_head: Option<B>,
}

/// The Hugging Face name of a tensor of layer `i`.
fn layer_name(i: usize, suffix: &str) -> String {
    format!("model.layers.{i}.{suffix}")
}

impl<B> Weights<B> {
    /// Builds every tensor with `make(name, shape)`, in the order of
    /// [`ModelConfig::parameters`].
    pub fn build(
        config: &ModelConfig,
        mut make: impl FnMut(&str, &[usize]) -> Result<B>,
    ) -> Result<Weights<B>> {
        let (h, i) = (config.hidden, config.intermediate);
        let (q_out, kv_out) = (
            config.heads * config.head_dim,
            config.kv_heads * config.head_dim,
        );
        let embed = make("model.embed_tokens.weight", &[config.vocab, h])?;
        let mut layers = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let mut tensor = |suffix: &str, shape: &[usize]| make(&layer_name(l, suffix), shape);
            let bias = config.qkv_bias;
            let input_norm = tensor("input_layernorm.weight", &[h])?;
            let q = tensor("self_attn.q_proj.weight", &[q_out, h])?;
            let q_bias = bias
                .then(|| tensor("self_attn.q_proj.bias", &[q_out]))
                .transpose()?;
            let k = tensor("self_attn.k_proj.weight", &[kv_out, h])?;
            let k_bias = bias
                .then(|| tensor("self_attn.k_proj.bias", &[kv_out]))
                .transpose()?;
            let v = tensor("self_attn.v_proj.weight", &[kv_out, h])?;
            let v_bias = bias
                .then(|| tensor("self_attn.v_proj.bias", &[kv_out]))
                .transpose()?;
            let o = tensor("self_attn.o_proj.weight", &[h, q_out])?;
            let o_bias = config
                .o_bias
                .then(|| tensor("self_attn.o_proj.bias", &[h]))
                .transpose()?;
            let post_norm = tensor("post_attention_layernorm.weight", &[h])?;
            let gate = tensor("mlp.gate_proj.weight", &[i, h])?;
            let up = tensor("mlp.up_proj.weight", &[i, h])?;
            let down = tensor("mlp.down_proj.weight", &[h, i])?;
            layers.push(LayerWeights {
                input_norm,
                q,
                q_bias,
                k,
                k_bias,
                v,
                v_bias,
                o,
                o_bias,
                post_norm,
                gate,
                up,
                down,
            });
        }
        let norm = make("model.norm.weight", &[h])?;
        let lm_head = (!config.tie_word_embeddings)
            .then(|| make("lm_head.weight", &[config.vocab, h]))
            .transpose()?;
        Ok(Weights {
            embed,
            layers,
            norm,
            lm_head,
        })
    }

    /// Every tensor with its Hugging Face name, in the order of [`ModelConfig::parameters`].
    pub fn named(&self) -> Vec<(String, &B)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), &self.embed)];
        for (l, w) in self.layers.iter().enumerate() {
            for (suffix, b) in w.tensors() {
                out.push((layer_name(l, suffix), b));
            }
        }
        out.push(("model.norm.weight".to_string(), &self.norm));
        if let Some(head) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), head));
        }
        out
    }

    /// Every tensor, mutably, in the order of [`Weights::named`].
    pub fn all_mut(&mut self) -> Vec<&mut B> {
        let mut out = vec![&mut self.embed];
        for w in &mut self.layers {
            out.extend(w.tensors_mut());
        }
        out.push(&mut self.norm);
        out.extend(self.lm_head.as_mut());
        out
    }

    /// The output projection: `lm_head`, or the embeddings when tied.
    pub fn output(&self) -> &B {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

impl<B> LayerWeights<B> {
    /// The layer's tensors with their name suffixes, in Hugging Face order.
    fn tensors(&self) -> Vec<(&'static str, &B)> {
        let mut out = vec![("input_layernorm.weight", &self.input_norm)];
        let attention = [
            (
                "self_attn.q_proj.weight",
                &self.q,
                "self_attn.q_proj.bias",
                &self.q_bias,
            ),
            (
                "self_attn.k_proj.weight",
                &self.k,
                "self_attn.k_proj.bias",
                &self.k_bias,
            ),
            (
                "self_attn.v_proj.weight",
                &self.v,
                "self_attn.v_proj.bias",
                &self.v_bias,
            ),
        ];
        for (weight_name, weight, bias_name, bias) in attention {
            out.push((weight_name, weight));
            if let Some(bias) = bias {
                out.push((bias_name, bias));
            }
        }
        out.push(("self_attn.o_proj.weight", &self.o));
        if let Some(bias) = &self.o_bias {
            out.push(("self_attn.o_proj.bias", bias));
        }
        out.extend([
            ("post_attention_layernorm.weight", &self.post_norm),
            ("mlp.gate_proj.weight", &self.gate),
            ("mlp.up_proj.weight", &self.up),
            ("mlp.down_proj.weight", &self.down),
        ]);
        out
    }

    /// The layer's tensors, mutably, in the order of [`LayerWeights::tensors`].
    fn tensors_mut(&mut self) -> Vec<&mut B> {
        let mut out = vec![&mut self.input_norm, &mut self.q];
        out.extend(self.q_bias.as_mut());
        out.push(&mut self.k);
        out.extend(self.k_bias.as_mut());
        out.push(&mut self.v);
        out.extend(self.v_bias.as_mut());
        out.push(&mut self.o);
        out.extend(self.o_bias.as_mut());
        out.extend([
            &mut self.post_norm,
            &mut self.gate,
            &mut self.up,
            &mut self.down,
        ]);
        out
    }
}

//! Generation: a KV cache, one forward step over the new tokens at a time, and greedy or
//! nucleus sampling, stopping at an end-of-sequence token.
//!
//! A step runs the same kernels as the training forward over just the new tokens: their
//! keys and values go into the cache at their positions, and the attention reads every cached
//! row (`PackedBlocks::decode`), so step `n` costs one token's projections, not `n`.

use kiln_compiler::DType;
use kiln_ops::attention::PackedBlocks;
use kiln_ops::rmsnorm::RmsNorm;
use kiln_runtime::{Buffer, BufferView};

use crate::block::Block;
use crate::model::Model;
use crate::{Error, Result};

/// The keys and values of every layer for the tokens so far, and the step's work buffers.
pub struct KvCache {
    capacity: usize,
    len: usize,
    keys: Vec<Buffer>,
    values: Vec<Buffer>,
    /// Queries and attention outputs at their positions, `[capacity, heads * head_dim]`, and
    /// the attention's lse (the decode kernel addresses rows by position).
    queries: Buffer,
    outputs: Buffer,
    lse: Buffer,
}

impl KvCache {
    /// The number of tokens cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most tokens the cache holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// How the next token is chosen from the logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token (the lowest id among equals).
    Greedy,
    /// Sampling from `softmax(logits / temperature)` restricted to the smallest set of most
    /// likely tokens whose probability reaches `top_p`, with a seeded generator.
    Nucleus {
        temperature: f32,
        top_p: f32,
        seed: u64,
    },
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Token ids that end the generation (they are included in the output).
    pub stop_tokens: Vec<u32>,
}

/// A token chooser over logits: the sampling rule and its generator state.
pub struct Sampler {
    sampling: Sampling,
    state: u64,
}

impl Sampler {
    /// A sampler for `sampling`; its generator starts from the seed.
    pub fn new(sampling: Sampling) -> Result<Sampler> {
        if let Sampling::Nucleus {
            temperature, top_p, ..
        } = sampling
        {
            let valid = temperature.is_finite() && temperature > 0.0 && top_p > 0.0 && top_p <= 1.0;
            if !valid {
                return Err(Error::Invalid(format!(
                    "sampling needs temperature > 0 and top_p in (0, 1], got {temperature} and \
                     {top_p}"
                )));
            }
        }
        let state = match sampling {
            Sampling::Nucleus { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Ok(Sampler { sampling, state })
    }

    /// SplitMix64: a tiny generator whose stream is fixed by the seed on every platform and
    /// version, which is what reproducible sampling needs (and all it needs).
    fn next_uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next token given `logits` over the vocabulary.
    pub fn choose(&mut self, logits: &[f32]) -> u32 {
        let argmax = || {
            let mut best = 0;
            for (i, &z) in logits.iter().enumerate() {
                if z > logits[best] {
                    best = i;
                }
            }
            best as u32
        };
        let (temperature, top_p) = match self.sampling {
            Sampling::Greedy => return argmax(),
            Sampling::Nucleus {
                temperature, top_p, ..
            } => (temperature as f64, top_p as f64),
        };
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &z| m.max(z)) as f64;
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &z)| (i as u32, ((z as f64 - max) / temperature).exp()))
            .collect();
        let total: f64 = probs.iter().map(|p| p.1).sum();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut kept = 0;
        let mut mass = 0.0;
        while kept < probs.len() && (kept == 0 || mass < top_p * total) {
            mass += probs[kept].1;
            kept += 1;
        }
        let mut r = self.next_uniform() * mass;
        for &(id, p) in &probs[..kept] {
            if r < p {
                return id;
            }
            r -= p;
        }
        probs[kept - 1].0
    }
}

impl Model {
    /// An empty cache for up to `capacity` tokens.
    pub fn kv_cache(&self, capacity: usize) -> Result<KvCache> {
        let c = &self.config;
        if capacity == 0 {
            return Err(Error::Invalid("a KV cache needs room for a token".into()));
        }
        let device = self.ops().device();
        let dtype = self.precision.dtype();
        let kv = capacity * c.kv_heads * c.head_dim;
        let q = capacity * c.heads * c.head_dim;
        let mut keys = vec![];
        let mut values = vec![];
        for _ in 0..c.layers {
            keys.push(device.alloc(dtype, kv)?);
            values.push(device.alloc(dtype, kv)?);
        }
        Ok(KvCache {
            capacity,
            len: 0,
            keys,
            values,
            queries: device.alloc(dtype, q)?,
            outputs: device.alloc(dtype, q)?,
            lse: device.alloc(DType::F32, capacity * c.heads)?,
        })
    }

    /// Runs `tokens` after what `cache` holds, adds them to it, and returns the logits (f32,
    /// `vocab`) of the last one.
    pub fn step(&self, cache: &mut KvCache, tokens: &[u32]) -> Result<Vec<f32>> {
        let c = &self.config;
        let (ops, n, past) = (&**self.ops(), tokens.len(), cache.len);
        if n == 0 || past + n > cache.capacity {
            return Err(Error::Invalid(format!(
                "{n} new tokens after {past} do not fit a cache of {} (at least one is needed)",
                cache.capacity
            )));
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= c.vocab) {
            return Err(Error::Invalid(format!(
                "token id {id} is outside the vocabulary of {}",
                c.vocab
            )));
        }
        let device = ops.device();
        let h = c.hidden;
        let (q_row, kv_row) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        let positions: Vec<i32> = (past..past + n).map(|p| p as i32).collect();
        let (ids, positions) = (device.upload(&ids)?, device.upload(&positions)?);
        let blocks = PackedBlocks::decode(ops, past, n, cache.capacity)?;
        // The training forward's block over the new tokens; only where q, k, v live differs.
        let block = Block::new(ops, c, self.precision.dtype(), n);
        let alloc = |len| device.alloc(self.precision.dtype(), len);

        let mut x = alloc(n * h)?;
        kiln_ops::embedding::Embedding {
            vocab: c.vocab,
            hidden: h,
        }
        .forward(ops, &ids, &self.weights.embed, &mut x)?;
        let (q_rows, kv_rows) = (
            past * q_row..(past + n) * q_row,
            past * kv_row..(past + n) * kv_row,
        );
        for (l, w) in self.weights.layers.iter().enumerate() {
            let (keys, values) = (&mut cache.keys[l], &mut cache.values[l]);
            let lora = self.layer_adapters(l, crate::Pass::Inference, 0);
            block.attention_inputs(
                w,
                lora.as_ref(),
                &mut Default::default(),
                &x,
                &positions,
                (
                    cache.queries.slice_mut(q_rows.clone())?,
                    keys.slice_mut(kv_rows.clone())?,
                    values.slice_mut(kv_rows.clone())?,
                ),
            )?;
            let (q, k, v) = (&cache.queries, &*keys, &*values);
            block.attend(&blocks, (q, k, v), &mut cache.outputs, &mut cache.lse)?;
            let mut out = alloc(n * h)?;
            let o = cache.outputs.slice(q_rows.clone())?;
            block.after_attention(w, lora.as_ref(), &x, o, &mut out)?;
            x = out;
        }
        cache.len += n;
        let last: BufferView<'_> = x.slice((n - 1) * h..n * h)?;
        let final_norm = RmsNorm {
            rows: 1,
            n: h,
            eps: c.rms_norm_eps as f32,
        };
        let (mut hidden, mut rstd) = (alloc(h)?, device.alloc(DType::F32, 1)?);
        final_norm.forward(ops, last, &self.weights.norm, &mut hidden, &mut rstd)?;
        self.project_to_vocab(hidden.view())
    }

    /// Generates after `prompt`: up to `max_new_tokens` tokens, stopping after a stop token.
    /// `on_token` sees each token as it is chosen (for streaming). Returns the new tokens.
    pub fn generate(
        &self,
        prompt: &[u32],
        options: &GenerateOptions,
        mut on_token: impl FnMut(u32) -> Result<()>,
    ) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(Error::Invalid(
                "generation needs a prompt of at least one token".into(),
            ));
        }
        let mut sampler = Sampler::new(options.sampling)?;
        let mut cache = self.kv_cache(prompt.len() + options.max_new_tokens)?;
        let mut out = vec![];
        if options.max_new_tokens == 0 {
            return Ok(out);
        }
        let mut logits = self.step(&mut cache, prompt)?;
        loop {
            let token = sampler.choose(&logits);
            out.push(token);
            on_token(token)?;
            if options.stop_tokens.contains(&token) || out.len() == options.max_new_tokens {
                return Ok(out);
            }
            logits = self.step(&mut cache, &[token])?;
        }
    }
}

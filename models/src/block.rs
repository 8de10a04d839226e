//! One decoder block of a Qwen2/Llama model, forward and backward side by side:
//!
//! ```text
//! n1 = rmsnorm(x) · w_in              q, k, v = n1 Wqᵀ (+bq), n1 Wkᵀ (+bk), n1 Wvᵀ (+bv)
//! q, k = rope(q, k, positions)        o = causal_varlen_attention(q, k, v)   (GQA)
//! h = x + o Woᵀ                       n2 = rmsnorm(h) · w_post
//! a = silu(n2 Wgᵀ) * (n2 Wuᵀ)         out = h + a Wdᵀ
//! ```
//!
//! The forward returns [`Saved`], exactly what the backward reads; the block's input `x` is
//! kept by the model (it is the previous block's output). Conventions: parameter gradients
//! (f32) are added to, activation gradients are overwritten.

use kiln_compiler::DType;
use kiln_ops::attention::{Attention, PackedBlocks};
use kiln_ops::rmsnorm::RmsNorm;
use kiln_ops::rope::Rope;
use kiln_ops::{elementwise, swiglu, Ops};
use kiln_runtime::{Buffer, BufferView, BufferViewMut};

use crate::batch::DeviceBatch;
use crate::config::ModelConfig;
use crate::layers::linear::{Linear, Write};
use crate::params::LayerWeights;
use crate::Result;

/// The activations one block's backward needs, saved by its forward.
pub struct Saved {
    n1: Buffer,
    rstd1: Buffer,
    /// q and k after RoPE, as the attention saw them.
    q: Buffer,
    k: Buffer,
    v: Buffer,
    o: Buffer,
    lse: Buffer,
    after: AfterAttention,
}

/// What the block after the attention (o_proj, residual, second norm, MLP) saves.
pub struct AfterAttention {
    h: Buffer,
    n2: Buffer,
    rstd2: Buffer,
    gate: Buffer,
    up: Buffer,
    act: Buffer,
}

/// A decoder block over one packed batch: the shapes of its layers, and where it runs.
pub struct Block<'a> {
    ops: &'a Ops,
    dtype: DType,
    tokens: usize,
    hidden: usize,
    intermediate: usize,
    norm: RmsNorm,
    rope: Rope,
    attention: Attention,
    q_proj: Linear,
    kv_proj: Linear,
    o_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

/// An optional bias as the GEMM takes it.
fn bias(b: &Option<Buffer>) -> Option<BufferView<'_>> {
    b.as_ref().map(Buffer::view)
}

impl<'a> Block<'a> {
    /// The block of `config` over `tokens` tokens of element type `dtype`.
    pub fn new(ops: &'a Ops, config: &ModelConfig, dtype: DType, tokens: usize) -> Block<'a> {
        let (h, i) = (config.hidden, config.intermediate);
        let q_out = config.heads * config.head_dim;
        let kv_out = config.kv_heads * config.head_dim;
        let linear = |inputs, outputs| Linear {
            tokens,
            inputs,
            outputs,
        };
        Block {
            ops,
            dtype,
            tokens,
            hidden: h,
            intermediate: i,
            norm: RmsNorm {
                rows: tokens,
                n: h,
                eps: config.rms_norm_eps as f32,
            },
            rope: Rope {
                tokens,
                q_heads: config.heads,
                kv_heads: config.kv_heads,
                head_dim: config.head_dim,
                theta: config.rope_theta as f32,
            },
            attention: Attention {
                q_heads: config.heads,
                kv_heads: config.kv_heads,
                head_dim: config.head_dim,
            },
            q_proj: linear(h, q_out),
            kv_proj: linear(h, kv_out),
            o_proj: linear(q_out, h),
            up_proj: linear(h, i),
            down_proj: linear(i, h),
        }
    }

    fn alloc(&self, len: usize) -> Result<Buffer> {
        Ok(self.ops.device().alloc(self.dtype, len)?)
    }

    fn alloc_f32(&self, len: usize) -> Result<Buffer> {
        Ok(self.ops.device().alloc(DType::F32, len)?)
    }

    /// `out = block(x)`; returns what the backward needs.
    pub fn forward(
        &self,
        w: &LayerWeights<Buffer>,
        batch: &DeviceBatch,
        x: &Buffer,
        out: &mut Buffer,
    ) -> Result<Saved> {
        let t = self.tokens;
        let (q_len, kv_len) = (t * self.q_proj.outputs, t * self.kv_proj.outputs);
        let (mut q, mut k, mut v) = (self.alloc(q_len)?, self.alloc(kv_len)?, self.alloc(kv_len)?);
        let (n1, rstd1) =
            self.attention_inputs(w, x, &batch.positions, (&mut q, &mut k, &mut v))?;
        let mut o = self.alloc(q_len)?;
        let mut lse = self.alloc_f32(t * self.attention.q_heads)?;
        self.attend(&batch.blocks, (&q, &k, &v), &mut o, &mut lse)?;
        let after = self.after_attention(w, x, o.view(), out)?;
        Ok(Saved {
            n1,
            rstd1,
            q,
            k,
            v,
            o,
            lse,
            after,
        })
    }

    /// The attention's inputs: `n1 = rmsnorm(x)` (returned with its rstd), and q, k, v
    /// projected from it into the given views and rotated by RoPE at `positions`. A decode step
    /// passes rows of its KV cache as `k` and `v`.
    pub fn attention_inputs<'b>(
        &self,
        w: &LayerWeights<Buffer>,
        x: &Buffer,
        positions: &Buffer,
        (q, k, v): (
            impl Into<BufferViewMut<'b>>,
            impl Into<BufferViewMut<'b>>,
            impl Into<BufferViewMut<'b>>,
        ),
    ) -> Result<(Buffer, Buffer)> {
        let ops = self.ops;
        let (mut q, mut k, mut v) = (q.into(), k.into(), v.into());
        let (mut n1, mut rstd1) = (
            self.alloc(self.tokens * self.hidden)?,
            self.alloc_f32(self.tokens)?,
        );
        self.norm
            .forward(ops, x, &w.input_norm, &mut n1, &mut rstd1)?;
        self.q_proj
            .forward(ops, &n1, &w.q, bias(&w.q_bias), q.reborrow())?;
        self.kv_proj
            .forward(ops, &n1, &w.k, bias(&w.k_bias), k.reborrow())?;
        self.kv_proj
            .forward(ops, &n1, &w.v, bias(&w.v_bias), v.reborrow())?;
        self.rope.forward(ops, q, k, positions)?;
        Ok((n1, rstd1))
    }

    /// `o = attention(q, k, v)` over `blocks` (a packed batch's, or a decode step's over the
    /// cache), and its lse.
    pub fn attend<'b>(
        &self,
        blocks: &PackedBlocks,
        (q, k, v): (
            impl Into<BufferView<'b>>,
            impl Into<BufferView<'b>>,
            impl Into<BufferView<'b>>,
        ),
        o: impl Into<BufferViewMut<'b>>,
        lse: impl Into<BufferViewMut<'b>>,
    ) -> Result<()> {
        Ok(self.attention.forward(self.ops, blocks, q, k, v, o, lse)?)
    }

    /// Everything after the attention: `h = x + o Woᵀ`, `n2 = rmsnorm(h)`, the MLP, and
    /// `out = h + mlp(n2)`; returns what the backward needs of it.
    pub fn after_attention(
        &self,
        w: &LayerWeights<Buffer>,
        x: &Buffer,
        o: BufferView<'_>,
        out: &mut Buffer,
    ) -> Result<AfterAttention> {
        let (ops, t) = (self.ops, self.tokens);
        let (th, ti) = (t * self.hidden, t * self.intermediate);
        let mut attn_out = self.alloc(th)?;
        self.o_proj
            .forward(ops, o, &w.o, bias(&w.o_bias), &mut attn_out)?;
        let (mut h, mut n2, mut rstd2) = (self.alloc(th)?, self.alloc(th)?, self.alloc_f32(t)?);
        self.norm
            .add_forward(ops, &attn_out, x, &mut h, &w.post_norm, &mut n2, &mut rstd2)?;

        let (mut gate, mut up, mut act) = (self.alloc(ti)?, self.alloc(ti)?, self.alloc(ti)?);
        self.up_proj.forward(ops, &n2, &w.gate, None, &mut gate)?;
        self.up_proj.forward(ops, &n2, &w.up, None, &mut up)?;
        swiglu::forward(ops, &gate, &up, &mut act)?;
        let mut mlp_out = attn_out; // the attention's output is in h now; reuse its memory
        self.down_proj
            .forward(ops, &act, &w.down, None, &mut mlp_out)?;
        elementwise::add(ops, &h, &mlp_out, out)?;
        Ok(AfterAttention {
            h,
            n2,
            rstd2,
            gate,
            up,
            act,
        })
    }

    /// From `d_out` (the gradient of the block's output), overwrites `dx` with the gradient of
    /// its input `x` and adds the parameter gradients to `grads`. `ones` holds `tokens` ones
    /// of the block's element type (the bias gradients are sums over tokens).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        w: &LayerWeights<Buffer>,
        grads: &mut LayerWeights<Buffer>,
        batch: &DeviceBatch,
        x: &Buffer,
        s: &Saved,
        d_out: &Buffer,
        dx: &mut Buffer,
        ones: &Buffer,
    ) -> Result<()> {
        let (ops, t) = (self.ops, self.tokens);
        let (th, ti) = (t * self.hidden, t * self.intermediate);
        let (q_len, kv_len) = (t * self.q_proj.outputs, t * self.kv_proj.outputs);

        // out = h + mlp: d_out reaches both h (through the residual) and the MLP.
        let mut d_act = self.alloc(ti)?;
        self.down_proj
            .backward_input(ops, d_out, &w.down, &mut d_act, Write::Overwrite)?;
        self.down_proj
            .backward_params(ops, &s.after.act, d_out, &mut grads.down, None)?;
        let (mut d_gate, mut d_up) = (self.alloc(ti)?, self.alloc(ti)?);
        swiglu::backward(
            ops,
            &s.after.gate,
            &s.after.up,
            &d_act,
            &mut d_gate,
            &mut d_up,
        )?;
        drop(d_act);
        let mut d_n2 = self.alloc(th)?;
        self.up_proj
            .backward_input(ops, &d_gate, &w.gate, &mut d_n2, Write::Overwrite)?;
        self.up_proj
            .backward_input(ops, &d_up, &w.up, &mut d_n2, Write::Accumulate)?;
        self.up_proj
            .backward_params(ops, &s.after.n2, &d_gate, &mut grads.gate, None)?;
        self.up_proj
            .backward_params(ops, &s.after.n2, &d_up, &mut grads.up, None)?;
        drop((d_gate, d_up));

        // h = x + attn: d_h is the gradient of h from the norm and the residual together, and
        // is the gradient of both the attention's output and x's residual path.
        let mut d_h = self.alloc(th)?;
        self.norm.add_backward(
            ops,
            &s.after.h,
            &w.post_norm,
            &d_n2,
            &s.after.rstd2,
            d_out,
            &mut d_h,
            &mut grads.post_norm,
        )?;
        drop(d_n2);
        let mut d_o = self.alloc(q_len)?;
        self.o_proj
            .backward_input(ops, &d_h, &w.o, &mut d_o, Write::Overwrite)?;
        let d_o_bias = grads
            .o_bias
            .as_mut()
            .map(|db| (ones.view(), BufferViewMut::from(db)));
        self.o_proj
            .backward_params(ops, &s.o, &d_h, &mut grads.o, d_o_bias)?;

        let (mut dq, mut dk, mut dv) =
            (self.alloc(q_len)?, self.alloc(kv_len)?, self.alloc(kv_len)?);
        self.attention.backward(
            ops,
            &batch.blocks,
            (&s.q, &s.k, &s.v),
            &s.o,
            &s.lse,
            &d_o,
            (&mut dq, &mut dk, &mut dv),
        )?;
        drop(d_o);
        self.rope
            .backward(ops, &mut dq, &mut dk, &batch.positions)?;

        let mut d_n1 = self.alloc(th)?;
        let projections = [
            (&self.q_proj, &dq, &w.q, &mut grads.q, &mut grads.q_bias),
            (&self.kv_proj, &dk, &w.k, &mut grads.k, &mut grads.k_bias),
            (&self.kv_proj, &dv, &w.v, &mut grads.v, &mut grads.v_bias),
        ];
        for (i, (proj, dy, weight, dw, db)) in projections.into_iter().enumerate() {
            let write = if i == 0 {
                Write::Overwrite
            } else {
                Write::Accumulate
            };
            proj.backward_input(ops, dy, weight, &mut d_n1, write)?;
            let dbias = db.as_mut().map(|db| (ones.view(), BufferViewMut::from(db)));
            proj.backward_params(ops, &s.n1, dy, dw, dbias)?;
        }
        // x feeds the first norm and the residual: dx = rmsnorm's input gradient + d_h.
        self.norm
            .add_backward(
                ops,
                x,
                &w.input_norm,
                &d_n1,
                &s.rstd1,
                &d_h,
                dx,
                &mut grads.input_norm,
            )
            .map_err(Into::into)
    }
}

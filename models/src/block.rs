//! One decoder block of a Qwen2/Llama model, forward and backward side by side:
//!
//! ```text
//! n1 = rmsnorm(x) · w_in              q, k, v = n1 Wqᵀ (+bq), n1 Wkᵀ (+bk), n1 Wvᵀ (+bv)
//! q, k = rope(q, k, positions)        o = causal_varlen_attention(q, k, v)   (GQA)
//! h = x + o Woᵀ                       n2 = rmsnorm(h) · w_post
//! a = silu(n2 Wgᵀ) * (n2 Wuᵀ)         out = h + a Wdᵀ
//! ```
//!
//! Any of the seven projections may carry a LoRA adapter (`layers::lora`), added to its output.
//! The forward returns [`Saved`], exactly what the backward reads; the block's input `x` is
//! kept by the model (it is the previous block's output). Conventions: parameter gradients
//! (f32) are added to, activation gradients are overwritten; a frozen base (LoRA training)
//! gets no weight gradients at all.

use kiln_compiler::DType;
use kiln_ops::attention::{Attention, PackedBlocks};
use kiln_ops::rmsnorm::RmsNorm;
use kiln_ops::rope::Rope;
use kiln_ops::{elementwise, swiglu, Ops};
use kiln_runtime::{Buffer, BufferView, BufferViewMut};

use crate::adapters::{LayerLora, LoraPair, Target};
use crate::batch::DeviceBatch;
use crate::config::ModelConfig;
use crate::layers::linear::{Linear, Write};
use crate::layers::lora::{AdapterActs, LayerAdapters, LoraPath};
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
    /// The adapters' saved activations (q, k, v here; o and the MLP's in `after`).
    lora: AdapterActs,
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
    lora: AdapterActs,
}

/// The gradients a block's backward adds to: the base weights' (full fine-tuning), the
/// adapters' (LoRA), or both.
pub struct BlockGrads<'g> {
    pub base: Option<&'g mut LayerWeights<Buffer>>,
    pub lora: Option<&'g mut LayerLora<Buffer>>,
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

    /// An activation or gradient of the block's element type that a kernel or GEMM writes in
    /// full: never zero-filled (see [`kiln_runtime::Device::alloc_uninit`]).
    fn alloc(&self, len: usize) -> Result<Buffer> {
        Ok(self.ops.device().alloc_uninit(self.dtype, len)?)
    }

    /// The same in f32 (rstd, lse).
    fn alloc_f32(&self, len: usize) -> Result<Buffer> {
        Ok(self.ops.device().alloc_uninit(DType::F32, len)?)
    }

    /// `out = block(x)`; returns what the backward needs.
    pub fn forward(
        &self,
        w: &LayerWeights<Buffer>,
        lora: Option<&LayerAdapters<'_>>,
        batch: &DeviceBatch,
        x: &Buffer,
        out: &mut Buffer,
    ) -> Result<Saved> {
        let t = self.tokens;
        let (q_len, kv_len) = (t * self.q_proj.outputs, t * self.kv_proj.outputs);
        let (mut q, mut k, mut v) = (self.alloc(q_len)?, self.alloc(kv_len)?, self.alloc(kv_len)?);
        let mut acts = AdapterActs::default();
        let mut _section = kiln_runtime::profile::section("block forward: norm, q, k, v, rope");
        let (n1, rstd1) = self.attention_inputs(
            w,
            lora,
            &mut acts,
            x,
            &batch.positions,
            (&mut q, &mut k, &mut v),
        )?;
        _section = kiln_runtime::profile::section("block forward: attention");
        let mut o = self.alloc(q_len)?;
        let mut lse = self.alloc_f32(t * self.attention.q_heads)?;
        self.attend(&batch.blocks, (&q, &k, &v), &mut o, &mut lse)?;
        _section = kiln_runtime::profile::section("block forward: o, norm, MLP");
        let after = self.after_attention(w, lora, x, o.view(), out)?;
        Ok(Saved {
            n1,
            rstd1,
            q,
            k,
            v,
            o,
            lse,
            lora: acts,
            after,
        })
    }

    /// `y = x Wᵀ (+ b)` of projection `target`, plus its adapter's `s · dropout(x) Aᵀ Bᵀ` when
    /// it has one (whose `u` goes into `acts`).
    #[allow(clippy::too_many_arguments)]
    fn project<'b>(
        &self,
        target: Target,
        linear: &Linear,
        lora: Option<&LayerAdapters<'_>>,
        acts: &mut AdapterActs,
        x: impl Into<BufferView<'b>>,
        w: &Buffer,
        bias: Option<BufferView<'_>>,
        y: impl Into<BufferViewMut<'b>>,
    ) -> Result<()> {
        let (x, mut y) = (x.into(), y.into());
        linear.forward(self.ops, x, w, bias, y.reborrow())?;
        if let Some((path, pair)) = lora.and_then(|l| l.path(target, *linear)) {
            acts.set(target, path.forward(self.ops, pair, x, y)?);
        }
        Ok(())
    }

    /// The backward of [`Block::project`]: `dx` is overwritten or added to as `write` says;
    /// the base weight's gradient (and its bias's, from `ones`) is added to when `base` is given,
    /// the adapter's when the projection has one. With `defer_adapter_input`, the adapter's input
    /// gradient `dropoutᵀ(du A)` is left out of `dx` and its `du` returned, for a kernel that
    /// adds it.
    #[allow(clippy::too_many_arguments)]
    fn project_backward(
        &self,
        target: Target,
        linear: &Linear,
        w: &Buffer,
        base: Option<(&mut Buffer, Option<&mut Buffer>, &Buffer)>,
        lora: Option<(&LayerAdapters<'_>, &mut LayerLora<Buffer>)>,
        acts: &AdapterActs,
        x: &Buffer,
        dy: &Buffer,
        dx: &mut Buffer,
        write: Write,
        defer_adapter_input: bool,
    ) -> Result<Option<Buffer>> {
        let ops = self.ops;
        linear.backward_input(ops, dy, w, &mut *dx, write)?;
        if let Some((dw, db, ones)) = base {
            let dbias = db.map(|db| (ones.view(), BufferViewMut::from(db)));
            linear.backward_params(ops, x, dy, dw, dbias)?;
        }
        if let Some((adapters, grads)) = lora {
            if let (Some((path, pair)), Some(u), Some(g)) = (
                adapters.path(target, *linear),
                acts.get(target),
                grads.get_mut(target),
            ) {
                let du = path.backward_params(ops, pair, g, x, u, dy)?;
                if defer_adapter_input {
                    return Ok(Some(du));
                }
                path.backward_input(ops, pair, &du, dx)?;
            }
        }
        Ok(None)
    }

    /// The attention's inputs: `n1 = rmsnorm(x)` (returned with its rstd), and q, k, v
    /// projected from it into the given views and rotated by RoPE at `positions`. A decode step
    /// passes rows of its KV cache as `k` and `v`.
    pub fn attention_inputs<'b>(
        &self,
        w: &LayerWeights<Buffer>,
        lora: Option<&LayerAdapters<'_>>,
        acts: &mut AdapterActs,
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
        let (qp, kvp) = (&self.q_proj, &self.kv_proj);
        self.project(
            Target::Q,
            qp,
            lora,
            acts,
            &n1,
            &w.q,
            bias(&w.q_bias),
            q.reborrow(),
        )?;
        self.project(
            Target::K,
            kvp,
            lora,
            acts,
            &n1,
            &w.k,
            bias(&w.k_bias),
            k.reborrow(),
        )?;
        self.project(
            Target::V,
            kvp,
            lora,
            acts,
            &n1,
            &w.v,
            bias(&w.v_bias),
            v.reborrow(),
        )?;
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
        lora: Option<&LayerAdapters<'_>>,
        x: &Buffer,
        o: BufferView<'_>,
        out: &mut Buffer,
    ) -> Result<AfterAttention> {
        let (ops, t) = (self.ops, self.tokens);
        let (th, ti) = (t * self.hidden, t * self.intermediate);
        let mut acts = AdapterActs::default();
        let mut attn_out = self.alloc(th)?;
        let o_bias = bias(&w.o_bias);
        self.project(
            Target::O,
            &self.o_proj,
            lora,
            &mut acts,
            o,
            &w.o,
            o_bias,
            &mut attn_out,
        )?;
        let (mut h, mut n2, mut rstd2) = (self.alloc(th)?, self.alloc(th)?, self.alloc_f32(t)?);
        self.norm
            .add_forward(ops, &attn_out, x, &mut h, &w.post_norm, &mut n2, &mut rstd2)?;

        let (mut gate, mut up, mut act) = (self.alloc(ti)?, self.alloc(ti)?, self.alloc(ti)?);
        if let Some([(g_path, g_pair), (u_path, u_pair)]) = self.mlp_adapters(lora) {
            // Both adapted: the adapters' `s · u Bᵀ` is added inside the SwiGLU kernel.
            let up_proj = &self.up_proj;
            up_proj.forward(ops, &n2, &w.gate, None, &mut gate)?;
            up_proj.forward(ops, &n2, &w.up, None, &mut up)?;
            acts.set(Target::Gate, g_path.project_down(ops, g_pair, &n2)?);
            acts.set(Target::Up, u_path.project_down(ops, u_pair, &n2)?);
            let terms = mlp_terms(&acts, [g_pair, u_pair], &g_path)?;
            swiglu::forward_lora(ops, t, &gate, &up, &terms, &mut act)?;
        } else {
            self.project_gate_up(w, lora, &mut acts, &n2, &mut gate, &mut up)?;
            swiglu::forward(ops, &gate, &up, &mut act)?;
        }
        let mut mlp_out = attn_out; // the attention's output is in h now; reuse its memory
        let down = &self.down_proj;
        self.project(
            Target::Down,
            down,
            lora,
            &mut acts,
            &act,
            &w.down,
            None,
            &mut mlp_out,
        )?;
        elementwise::add(ops, &h, &mlp_out, out)?;
        Ok(AfterAttention {
            h,
            n2,
            rstd2,
            gate,
            up,
            act,
            lora: acts,
        })
    }

    /// The adapters of gate and up when the layer has both: the MLP then runs the fused LoRA
    /// SwiGLU ([`swiglu::forward_lora`]); the forward and the backward decide alike.
    fn mlp_adapters<'l>(
        &self,
        lora: Option<&LayerAdapters<'l>>,
    ) -> Option<[(LoraPath, &'l LoraPair<Buffer>); 2]> {
        let lora = lora.filter(|_| lora_fusion(self.ops.device().is_gpu()) != LoraFusion::None)?;
        Some([
            lora.path(Target::Gate, self.up_proj)?,
            lora.path(Target::Up, self.up_proj)?,
        ])
    }

    /// `gate` and `up` projected from `n2`, each with its adapter's output added if it has one.
    fn project_gate_up(
        &self,
        w: &LayerWeights<Buffer>,
        lora: Option<&LayerAdapters<'_>>,
        acts: &mut AdapterActs,
        n2: &Buffer,
        gate: &mut Buffer,
        up: &mut Buffer,
    ) -> Result<()> {
        let up_proj = &self.up_proj;
        self.project(Target::Gate, up_proj, lora, acts, n2, &w.gate, None, gate)?;
        self.project(Target::Up, up_proj, lora, acts, n2, &w.up, None, up)
    }

    /// From `d_out` (the gradient of the block's output), overwrites `dx` with the gradient of
    /// its input `x` and adds the parameter gradients to `grads` (the base weights' when
    /// `grads.base` is given, the adapters' when `lora` and `grads.lora` are). `ones` holds
    /// `tokens` ones of the block's element type (the bias gradients are sums over tokens).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        w: &LayerWeights<Buffer>,
        lora: Option<&LayerAdapters<'_>>,
        grads: BlockGrads<'_>,
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
        let BlockGrads {
            mut base,
            lora: mut lora_grads,
        } = grads;
        // Each projection's adapter and its gradients, reborrowed per call.
        macro_rules! lora_of {
            () => {
                lora.zip(lora_grads.as_deref_mut())
            };
        }
        let mut _section = kiln_runtime::profile::section("block backward: down");
        // A frozen base still runs the norms' backward; their weight gradients land here.
        let mut frozen_norm = self.ops.device().alloc(DType::F32, self.hidden)?;
        let after = &s.after;

        // out = h + mlp: d_out reaches both h (through the residual) and the MLP.
        let mut d_act = self.alloc(ti)?;
        let down = &self.down_proj;
        let mlp = self.mlp_adapters(lora);
        // With the fused LoRA SwiGLU and an adapter on down without dropout, the adapter's
        // part of d(act), du A, is added inside the SwiGLU backward (`down_du` keeps du).
        let down_adapter = lora.and_then(|l| l.path(Target::Down, *down));
        let defer = mlp.is_some()
            && lora_fusion(ops.device().is_gpu()) == LoraFusion::All
            && down_adapter.is_some_and(|(path, _)| path.dropout.is_none());
        let dw = base.as_deref_mut().map(|g| (&mut g.down, None, ones));
        let down_du = self.project_backward(
            Target::Down,
            down,
            &w.down,
            dw,
            lora_of!(),
            &after.lora,
            &after.act,
            d_out,
            &mut d_act,
            Write::Overwrite,
            defer,
        )?;
        _section = kiln_runtime::profile::section("block backward: swiglu");
        let (mut d_gate, mut d_up) = (self.alloc(ti)?, self.alloc(ti)?);
        match mlp {
            Some([(g_path, g_pair), (_, u_pair)]) => {
                let terms = mlp_terms(&after.lora, [g_pair, u_pair], &g_path)?;
                let (gate, up) = (&after.gate, &after.up);
                let down_term =
                    down_du
                        .as_ref()
                        .zip(down_adapter)
                        .map(|(du, (_, pair))| swiglu::DownTerm {
                            du: du.view(),
                            a: pair.a.view(),
                        });
                let (dg, du) = (&mut d_gate, &mut d_up);
                swiglu::backward_lora(ops, t, gate, up, &terms, down_term, &d_act, dg, du)?
            }
            None => swiglu::backward(ops, &after.gate, &after.up, &d_act, &mut d_gate, &mut d_up)?,
        }
        _section = kiln_runtime::profile::section("block backward: gate and up");
        drop(d_act);
        let mut d_n2 = self.alloc(th)?;
        let up_proj = &self.up_proj;
        let dw = base.as_deref_mut().map(|g| (&mut g.gate, None, ones));
        self.project_backward(
            Target::Gate,
            up_proj,
            &w.gate,
            dw,
            lora_of!(),
            &after.lora,
            &after.n2,
            &d_gate,
            &mut d_n2,
            Write::Overwrite,
            false,
        )?;
        let dw = base.as_deref_mut().map(|g| (&mut g.up, None, ones));
        self.project_backward(
            Target::Up,
            up_proj,
            &w.up,
            dw,
            lora_of!(),
            &after.lora,
            &after.n2,
            &d_up,
            &mut d_n2,
            Write::Accumulate,
            false,
        )?;
        drop((d_gate, d_up));

        _section = kiln_runtime::profile::section("block backward: post-attention norm");
        // h = x + attn: d_h is the gradient of h from the norm and the residual together, and
        // is the gradient of both the attention's output and x's residual path.
        let mut d_h = self.alloc(th)?;
        let d_post_norm = match base.as_deref_mut() {
            Some(g) => &mut g.post_norm,
            None => &mut frozen_norm,
        };
        self.norm.add_backward(
            ops,
            &after.h,
            &w.post_norm,
            &d_n2,
            &after.rstd2,
            d_out,
            &mut d_h,
            d_post_norm,
        )?;
        drop(d_n2);
        _section = kiln_runtime::profile::section("block backward: o");
        let mut d_o = self.alloc(q_len)?;
        let dw = base
            .as_deref_mut()
            .map(|g| (&mut g.o, g.o_bias.as_mut(), ones));
        self.project_backward(
            Target::O,
            &self.o_proj,
            &w.o,
            dw,
            lora_of!(),
            &after.lora,
            &s.o,
            &d_h,
            &mut d_o,
            Write::Overwrite,
            false,
        )?;

        _section = kiln_runtime::profile::section("block backward: attention");
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
        _section = kiln_runtime::profile::section("block backward: rope");
        self.rope
            .backward(ops, &mut dq, &mut dk, &batch.positions)?;

        _section = kiln_runtime::profile::section("block backward: q, k, v");
        let mut d_n1 = self.alloc(th)?;
        let dw = base
            .as_deref_mut()
            .map(|g| (&mut g.q, g.q_bias.as_mut(), ones));
        self.project_backward(
            Target::Q,
            &self.q_proj,
            &w.q,
            dw,
            lora_of!(),
            &s.lora,
            &s.n1,
            &dq,
            &mut d_n1,
            Write::Overwrite,
            false,
        )?;
        let dw = base
            .as_deref_mut()
            .map(|g| (&mut g.k, g.k_bias.as_mut(), ones));
        self.project_backward(
            Target::K,
            &self.kv_proj,
            &w.k,
            dw,
            lora_of!(),
            &s.lora,
            &s.n1,
            &dk,
            &mut d_n1,
            Write::Accumulate,
            false,
        )?;
        let dw = base
            .as_deref_mut()
            .map(|g| (&mut g.v, g.v_bias.as_mut(), ones));
        self.project_backward(
            Target::V,
            &self.kv_proj,
            &w.v,
            dw,
            lora_of!(),
            &s.lora,
            &s.n1,
            &dv,
            &mut d_n1,
            Write::Accumulate,
            false,
        )?;
        _section = kiln_runtime::profile::section("block backward: input norm");
        // x feeds the first norm and the residual: dx = rmsnorm's input gradient + d_h.
        let d_input_norm = match base {
            Some(g) => &mut g.input_norm,
            None => &mut frozen_norm,
        };
        self.norm
            .add_backward(
                ops,
                x,
                &w.input_norm,
                &d_n1,
                &s.rstd1,
                &d_h,
                dx,
                d_input_norm,
            )
            .map_err(Into::into)
    }
}

/// The fused LoRA SwiGLU's low-rank terms: the saved `u` of gate and up and their B.
fn mlp_terms<'a>(
    acts: &'a AdapterActs,
    [gate, up]: [&'a LoraPair<Buffer>; 2],
    path: &LoraPath,
) -> Result<swiglu::LoraTerms<'a>> {
    let saved = |target| {
        acts.get(target).ok_or_else(|| {
            crate::Error::Invalid(format!("the {target:?} adapter's activation was not saved"))
        })
    };
    Ok(swiglu::LoraTerms {
        u_gate: saved(Target::Gate)?.view(),
        b_gate: gate.b.view(),
        u_up: saved(Target::Up)?.view(),
        b_up: up.b.view(),
        rank: path.rank,
        scale: path.scale,
    })
}

/// Which LoRA fusions the MLP uses: all, only gate and up in the SwiGLU kernels, or none
/// (every adapter's path as separate GEMMs). The results agree to rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LoraFusion {
    All,
    Mlp,
    None,
}

/// The fusions on a GPU (`on_gpu`) or the CPU: `KILN_LORA_FUSION=all|mlp|none` (read once), else
/// all on a GPU and none on the CPU. On the H200 the fused kernels tie the separate GEMMs at r32;
/// on the CPU, where the fused kernels' tile products are Cranelift code beside the `gemm`
/// crate's GEMMs, they made SmolLM2's LoRA step 12% slower (4.3 s against 3.8 s, 2026-12-04).
fn lora_fusion(on_gpu: bool) -> LoraFusion {
    static SET: std::sync::OnceLock<Option<LoraFusion>> = std::sync::OnceLock::new();
    let set = SET.get_or_init(|| match std::env::var("KILN_LORA_FUSION").as_deref() {
        Ok("none") => Some(LoraFusion::None),
        Ok("mlp") => Some(LoraFusion::Mlp),
        Ok("all") => Some(LoraFusion::All),
        Err(_) => None,
        Ok(other) => {
            eprintln!("warning: KILN_LORA_FUSION=`{other}` is not all, mlp or none; ignored");
            None
        }
    });
    set.unwrap_or(if on_gpu {
        LoraFusion::All
    } else {
        LoraFusion::None
    })
}

//! The LoRA path of a linear layer, forward and backward side by side, as five small GEMMs
//! around the frozen base layer's own (and a dropout kernel when dropout is on):
//!
//! ```text
//! forward:   xd = dropout(x)        u = xd Aᵀ   [T, r]        y += s · u Bᵀ
//! backward:  du = s · dy B   [T, r]
//!            dB += s · dyᵀ u        dA += duᵀ xd              dx += dropoutᵀ(du A)
//! ```
//!
//! `u` is what the forward saves (rank-wide, small); `xd` is redrawn from the seeded mask.

use kiln_ops::dropout::Dropout;
use kiln_ops::Ops;
use kiln_runtime::{Buffer, BufferView, BufferViewMut, Gemm};

use crate::adapters::{LayerLora, LoraPair, Target};
use crate::layers::linear::Linear;
use crate::Result;

/// One adapted projection's LoRA path over `linear`'s shape.
#[derive(Clone, Copy, Debug)]
pub struct LoraPath {
    pub linear: Linear,
    pub rank: usize,
    pub scale: f32,
    /// Dropout on the adapter's input, with this call's mask seed.
    pub dropout: Option<Dropout>,
}

impl LoraPath {
    /// The adapter's input: `x`, or a dropped-out copy of it.
    fn input<'a>(&self, ops: &Ops, x: BufferView<'a>) -> Result<Input<'a>> {
        Ok(match self.dropout {
            None => Input::Plain(x),
            Some(mask) => {
                let mut xd = ops.device().alloc_uninit(x.dtype(), x.len())?;
                mask.forward(ops, x, &mut xd)?;
                Input::Dropped(xd)
            }
        })
    }

    /// `u = dropout(x) Aᵀ` (`[T, r]`), the adapter's rank-wide activation, which the forward
    /// multiplies by `s · Bᵀ` and the backward keeps.
    pub fn project_down<'a>(
        &self,
        ops: &Ops,
        pair: &LoraPair<Buffer>,
        x: impl Into<BufferView<'a>>,
    ) -> Result<Buffer> {
        let (t, r) = (self.linear.tokens, self.rank);
        let x = x.into();
        let device = ops.device();
        let mut u = device.alloc_uninit(x.dtype(), t * r)?;
        let xd = self.input(ops, x)?;
        let gemm = Gemm::new(t, r, self.linear.inputs).transpose_b();
        device.gemm(&gemm, xd.view(), &pair.a, &mut u, None)?;
        Ok(u)
    }

    /// `y += s · (dropout(x) Aᵀ) Bᵀ`; returns `u = dropout(x) Aᵀ` for the backward.
    pub fn forward<'a>(
        &self,
        ops: &Ops,
        pair: &LoraPair<Buffer>,
        x: impl Into<BufferView<'a>>,
        y: impl Into<BufferViewMut<'a>>,
    ) -> Result<Buffer> {
        let (t, r) = (self.linear.tokens, self.rank);
        let device = ops.device();
        let u = self.project_down(ops, pair, x)?;
        let gemm = Gemm::new(t, self.linear.outputs, r)
            .transpose_b()
            .with_alpha(self.scale)
            .with_beta(1.0);
        device.gemm(&gemm, &u, &pair.b, y, None)?;
        Ok(u)
    }

    /// The adapter's backward but its input gradient: from `dy`, adds the adapter's gradients
    /// to `grads` (f32) and returns `du = s · dy B` (`[T, r]`), from which the input gradient is
    /// `dropoutᵀ(du A)` ([`LoraPath::backward_input`], or a kernel that fuses it).
    pub fn backward_params<'a>(
        &self,
        ops: &Ops,
        pair: &LoraPair<Buffer>,
        grads: &mut LoraPair<Buffer>,
        x: impl Into<BufferView<'a>>,
        u: &Buffer,
        dy: impl Into<BufferView<'a>>,
    ) -> Result<Buffer> {
        let (t, r) = (self.linear.tokens, self.rank);
        let (inputs, outputs) = (self.linear.inputs, self.linear.outputs);
        let (x, dy) = (x.into(), dy.into());
        let device = ops.device();
        let mut du = device.alloc_uninit(dy.dtype(), t * r)?;
        let gemm = Gemm::new(t, r, outputs).with_alpha(self.scale);
        device.gemm(&gemm, dy, &pair.b, &mut du, None)?;
        // dB[O, r] += s · dyᵀ[O, T] · u[T, r]
        let gemm = Gemm::new(outputs, r, t)
            .transpose_a()
            .with_alpha(self.scale)
            .with_beta(1.0);
        device.gemm(&gemm, dy, u, &mut grads.b, None)?;
        // dA[r, I] += duᵀ[r, T] · xd[T, I]
        let xd = self.input(ops, x)?;
        let gemm = Gemm::new(r, inputs, t).transpose_a().with_beta(1.0);
        device.gemm(&gemm, &du, xd.view(), &mut grads.a, None)?;
        Ok(du)
    }

    /// `dx[T, I] += dropoutᵀ(du[T, r] · A[r, I])`.
    pub fn backward_input<'a>(
        &self,
        ops: &Ops,
        pair: &LoraPair<Buffer>,
        du: &Buffer,
        dx: impl Into<BufferViewMut<'a>>,
    ) -> Result<()> {
        let (t, r, inputs) = (self.linear.tokens, self.rank, self.linear.inputs);
        let mut dx = dx.into();
        let device = ops.device();
        let gemm = Gemm::new(t, inputs, r);
        match self.dropout {
            None => device.gemm(&gemm.with_beta(1.0), du, &pair.a, dx, None)?,
            Some(mask) => {
                let mut dxd = device.alloc_uninit(dx.dtype(), t * inputs)?;
                device.gemm(&gemm, du, &pair.a, &mut dxd, None)?;
                mask.backward_add(ops, &dxd, dx.reborrow())?;
            }
        }
        Ok(())
    }
}

/// The adapter's input as the GEMMs read it.
enum Input<'a> {
    Plain(BufferView<'a>),
    Dropped(Buffer),
}

impl Input<'_> {
    fn view(&self) -> BufferView<'_> {
        match self {
            Input::Plain(x) => *x,
            Input::Dropped(xd) => xd.view(),
        }
    }
}

/// A layer's adapters as one forward or backward uses them: the tensors, their rank and scale,
/// and the dropout of this call (its mask seed, drawn per step and micro-batch).
#[derive(Clone, Copy, Debug)]
pub struct LayerAdapters<'a> {
    pub weights: &'a LayerLora<Buffer>,
    pub rank: usize,
    pub scale: f32,
    pub dropout: f32,
    pub seed: u64,
}

impl<'a> LayerAdapters<'a> {
    /// The LoRA path of `target` over `linear`, if the layer adapts it.
    pub fn path(&self, target: Target, linear: Linear) -> Option<(LoraPath, &'a LoraPair<Buffer>)> {
        let pair = self.weights.get(target)?;
        let dropout = (self.dropout > 0.0).then(|| Dropout {
            p: self.dropout,
            seed: crate::rng::derive(self.seed, &[target as u64]) as u32,
        });
        Some((
            LoraPath {
                linear,
                rank: self.rank,
                scale: self.scale,
                dropout,
            },
            pair,
        ))
    }
}

/// What the forward of a layer's adapters saves: `u = dropout(x) Aᵀ` per adapted target.
#[derive(Default)]
pub struct AdapterActs {
    u: [Option<Buffer>; 7],
}

impl AdapterActs {
    pub(crate) fn set(&mut self, target: Target, u: Buffer) {
        self.u[target as usize] = Some(u);
    }

    pub(crate) fn get(&self, target: Target) -> Option<&Buffer> {
        self.u[target as usize].as_ref()
    }
}

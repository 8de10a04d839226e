//! Fused AdamW on f32 master weights, with gradient clipping by the global norm computed on the
//! device (no host synchronisation) and learning rates per parameter group, so LoRA+ is a group
//! whose rate is `ratio x lr`.
//!
//! A step: [`GradNorm::new`], [`GradNorm::add`] for every gradient, [`GradNorm::finish`] (the
//! clipping factor, on the device), then [`AdamW::update`] for every parameter tensor with its
//! group's learning rate.

use kiln_compiler::DType;
use kiln_runtime::{Args, Buffer, BufferView, BufferViewMut};

use crate::context::{expect, KernelConfig, Ops};
use crate::Result;

const FILE: &str = "adamw.kiln";
/// One 16-byte vector of each f32 stream per thread: the fastest measured on the H200.
const BLOCK: usize = 1024;
const WARPS: u32 = 8;
/// Gradient elements per program of the sum of squares.
const SQ_SUM_BLOCK: usize = 4096;

/// AdamW hyper-parameters shared by every group (the learning rate is per update).
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// One parameter tensor's state: f32 master weights, gradient, both moments (all of
/// `param.len()` elements), and, when the model computes in another type (bf16), the copy it
/// computes with. The update reads the gradient and updates the weights and moments in place,
/// so those are exclusive views; the copy is written. Views can be of whole buffers
/// (`buffer.view_mut()`) or of parts of one arena. Without a copy the master weights are the
/// model's own (f32 training).
pub struct ParamState<'a> {
    pub param: BufferViewMut<'a>,
    pub grad: BufferView<'a>,
    pub exp_avg: BufferViewMut<'a>,
    pub exp_avg_sq: BufferViewMut<'a>,
    pub param_copy: Option<BufferViewMut<'a>>,
}

impl AdamW {
    /// Updates one tensor at step `step` (1-based) with learning rate `lr`, its gradient
    /// multiplied by `grad_scale[0]` (the factor from [`GradNorm::finish`]). `param`,
    /// `exp_avg` and `exp_avg_sq` are updated in place (passed to the kernel with `in_out`);
    /// `param_copy`, if any, is overwritten with the new weights in its own type.
    pub fn update<'a>(
        &self,
        ops: &Ops,
        state: &mut ParamState<'_>,
        grad_scale: impl Into<BufferView<'a>>,
        lr: f32,
        step: u32,
    ) -> Result<()> {
        const OP: &str = "adamw";
        let grad_scale = grad_scale.into();
        let n = state.param.len();
        expect(OP, "param", &state.param, DType::F32, n)?;
        expect(OP, "grad", &state.grad, DType::F32, n)?;
        expect(OP, "exp_avg", &state.exp_avg, DType::F32, n)?;
        expect(OP, "exp_avg_sq", &state.exp_avg_sq, DType::F32, n)?;
        if let Some(copy) = &state.param_copy {
            if copy.dtype() == DType::F32 || copy.len() != n {
                expect(OP, "param_copy", copy, DType::Bf16, n)?;
            }
        }
        if grad_scale.dtype() != DType::F32 || grad_scale.is_empty() {
            expect(OP, "grad_scale", &grad_scale, DType::F32, 1)?;
        }
        // The scalars PyTorch computes on the host, in f64, before its element loop.
        let step = step.max(1) as i32;
        let bias1 = 1.0 - (self.beta1 as f64).powi(step);
        let bias2 = 1.0 - (self.beta2 as f64).powi(step);
        let decay = 1.0 - lr as f64 * self.weight_decay as f64;
        let step_size = lr as f64 / bias1;
        let kernel = if state.param_copy.is_some() {
            "adamw"
        } else {
            "adamw_f32"
        };
        let mut config = KernelConfig::new(FILE, kernel)
            .int("BLOCK", BLOCK)
            .warps(WARPS);
        let mut args = Args::new()
            .in_out("param", &mut state.param)
            .input("grad", state.grad)
            .in_out("exp_avg", &mut state.exp_avg)
            .in_out("exp_avg_sq", &mut state.exp_avg_sq)
            .input("grad_scale", grad_scale)
            .i64("n", n as i64)
            .f32("decay", decay as f32)
            .f32("step_size", step_size as f32)
            .f32("beta1", self.beta1)
            .f32("beta2", self.beta2)
            .f32("bias2_sqrt", bias2.sqrt() as f32)
            .f32("eps", self.eps);
        if let Some(copy) = &mut state.param_copy {
            config = config.elem(copy.dtype());
            args = args.output("param_copy", copy);
        }
        ops.launch(&config, [config.programs("BLOCK", n), 1, 1], &args)
    }
}

/// The global gradient norm of a step, accumulated on the device.
pub struct GradNorm {
    sum_sq: Buffer,
    /// `[clipping factor, norm]`, written by [`GradNorm::finish`].
    scale: Buffer,
}

impl GradNorm {
    /// A zeroed accumulator on `ops`' device.
    pub fn new(ops: &Ops) -> Result<GradNorm> {
        Ok(GradNorm {
            sum_sq: ops.scratch(DType::F32, 1)?,
            scale: ops.scratch(DType::F32, 2)?,
        })
    }

    /// Adds `grad`'s sum of squares (f32 gradient) to the accumulator, in place.
    pub fn add<'a>(&mut self, ops: &Ops, grad: impl Into<BufferView<'a>>) -> Result<()> {
        let grad = grad.into();
        expect("grad norm", "grad", &grad, DType::F32, grad.len())?;
        let config = KernelConfig::new(FILE, "grad_sq_sum")
            .int("BLOCK", SQ_SUM_BLOCK)
            .warps(8);
        let args = Args::new()
            .input("grad", grad)
            .in_out("acc", &mut self.sum_sq)
            .i64("n", grad.len() as i64);
        ops.launch(&config, [config.programs("BLOCK", grad.len()), 1, 1], &args)
    }

    /// Computes the clipping factor `min(1, max_norm / norm)` (1 when `max_norm` is `None`)
    /// and returns the buffer `[factor, norm]` to pass to [`AdamW::update`] as `grad_scale`.
    pub fn finish(&mut self, ops: &Ops, max_norm: Option<f32>) -> Result<&Buffer> {
        let config = KernelConfig::new(FILE, "clip_scale").warps(1);
        let args = Args::new()
            .input("acc", &self.sum_sq)
            .output("scale", &mut self.scale)
            .f32("max_norm", max_norm.unwrap_or(f32::INFINITY));
        ops.launch(&config, [1, 1, 1], &args)?;
        Ok(&self.scale)
    }

    /// Zeroes the accumulator for the next step.
    pub fn reset(&mut self) -> Result<()> {
        Ok(self.sum_sq.zero()?)
    }

    /// The `[factor, norm]` buffer (read it to log the norm; that synchronises).
    pub fn scale(&self) -> &Buffer {
        &self.scale
    }
}

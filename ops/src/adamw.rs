//! Fused AdamW on f32 master weights, with gradient clipping by the global norm, the decision to
//! skip a non-finite step and Adam's bias corrections all computed on the device, so a training
//! step queues its update without waiting for the GPU; learning rates are per parameter group,
//! so LoRA+ is a group whose rate is `ratio x lr`.
//!
//! A step: [`StepControl::begin`]; [`StepControl::add_loss`] for every micro-batch's loss
//! totals; [`StepControl::add_grad`] for every gradient; [`StepControl::finish`] (the control
//! block: clipping factor, norm, whether to apply, t and the bias corrections); then
//! [`AdamW::update`] for every parameter tensor with its group's learning rate. The metrics
//! are read back from [`StepControl::control`] whenever the caller likes
//! ([`kiln_runtime::Buffer::read_later`]).
//!
//! Deterministic: the norm is summed from per-block partial sums in a fixed order (no float
//! atomics), so two runs on the same device give the same updates bit for bit.

use kiln_compiler::DType;
use kiln_runtime::{Args, Buffer, BufferView, BufferViewMut};

use crate::context::{expect, KernelConfig, Ops};
use crate::{Error, Result};

const FILE: &str = "adamw.kiln";
/// One 16-byte vector of each f32 stream per thread: the fastest measured on the H200.
const BLOCK: usize = 1024;
const WARPS: u32 = 8;
/// Gradient elements per program of the sum of squares.
const SQ_SUM_BLOCK: usize = 4096;
const _: () = assert!(SQ_SUM_BLOCK % BLOCK == 0);

/// The fields of the control block `step_control` writes (see `adamw.kiln`).
pub mod control {
    pub const CLIP: usize = 0;
    pub const GRAD_NORM: usize = 1;
    pub const APPLY: usize = 2;
    pub const LOSS_SUM: usize = 3;
    pub const PREDICTED: usize = 4;
    pub const UPDATES: usize = 5;
    pub const BIAS1: usize = 6;
    pub const BIAS2_SQRT: usize = 7;
    /// Its length in f32s.
    pub const LEN: usize = 8;
}

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
    /// Updates one tensor with learning rate `lr`, its gradient clipped, and Adam's `t` and bias
    /// corrections taken, from `control` (the block [`StepControl::finish`] wrote); when that
    /// says the step is skipped the kernel changes nothing. `param`, `exp_avg` and `exp_avg_sq`
    /// are updated in place (passed to the kernel with `in_out`); `param_copy`, if any, is
    /// overwritten with the new weights in its own type.
    pub fn update(
        &self,
        ops: &Ops,
        state: &mut ParamState<'_>,
        control: &StepControl,
        lr: f32,
    ) -> Result<()> {
        let n = state.param.len();
        check_state("adamw", state, n)?;
        // The one scalar PyTorch computes on the host that does not depend on t.
        let decay = self.decay(lr, self.weight_decay);
        self.launch(ops, ["adamw", "adamw_f32"], state, control, n, |args| {
            args.f32("decay", decay).f32("lr", lr)
        })
    }

    /// Launches the update `kernels[0]` (with a compute copy) or `kernels[1]` (the weights
    /// are the masters) over `n` elements of `state`, with `extra`'s arguments besides the
    /// tensors, the control block and the betas.
    fn launch<'a>(
        &self,
        ops: &Ops,
        kernels: [&'static str; 2],
        state: &'a mut ParamState<'_>,
        control: &'a StepControl,
        n: usize,
        extra: impl FnOnce(Args<'a>) -> Args<'a>,
    ) -> Result<()> {
        let kernel = kernels[usize::from(state.param_copy.is_none())];
        let mut config = KernelConfig::new(FILE, kernel)
            .int("BLOCK", BLOCK)
            .warps(WARPS);
        let mut args = Args::new()
            .in_out("param", &mut state.param)
            .input("grad", state.grad)
            .in_out("exp_avg", &mut state.exp_avg)
            .in_out("exp_avg_sq", &mut state.exp_avg_sq)
            .input("control", &control.control)
            .i64("n", n as i64)
            .f32("beta1", self.beta1)
            .f32("beta2", self.beta2)
            .f32("eps", self.eps);
        if let Some(copy) = &mut state.param_copy {
            config = config.elem(copy.dtype());
            args = args.output("param_copy", copy);
        }
        let args = extra(args);
        ops.launch(&config, [config.programs("BLOCK", n), 1, 1], &args)
    }
}

/// Checks that `state`'s tensors are f32 (the copy bf16) of `n` elements each.
fn check_state(op: &'static str, state: &ParamState<'_>, n: usize) -> Result<()> {
    expect(op, "param", &state.param, DType::F32, n)?;
    expect(op, "grad", &state.grad, DType::F32, n)?;
    expect(op, "exp_avg", &state.exp_avg, DType::F32, n)?;
    expect(op, "exp_avg_sq", &state.exp_avg_sq, DType::F32, n)?;
    if let Some(copy) = &state.param_copy {
        if copy.dtype() == DType::F32 || copy.len() != n {
            expect(op, "param_copy", copy, DType::Bf16, n)?;
        }
    }
    Ok(())
}

/// The layout of a multi-tensor update ([`AdamW::update_multi`]): the tensors lie back to back,
/// each starting at a multiple of [`MultiTensor::ALIGN`] elements, and each is in one of a few
/// parameter groups (a learning-rate multiple and whether it decays).
pub struct MultiTensor {
    /// The group of every AdamW block (`BLOCK` elements) of the span, one program each (i32).
    block_group: Buffer,
    /// The span's length in elements: the last tensor's end.
    len: usize,
    groups: usize,
}

impl MultiTensor {
    /// The alignment, in elements, of every tensor in the span: a block of the gradient
    /// norm's partial sums (so each lies in one tensor, and the partial sums of a span are
    /// those of its tensors one by one, bit for bit), and so a whole number of AdamW blocks.
    pub const ALIGN: usize = SQ_SUM_BLOCK;

    /// The layout of tensors of `lens` elements in groups `group` (indices below `groups`),
    /// in this order.
    pub fn new(ops: &Ops, lens: &[usize], group: &[u32], groups: usize) -> Result<MultiTensor> {
        if lens.len() != group.len() || group.iter().any(|&g| g as usize >= groups) {
            return Err(Error::shape(
                "adamw (multi-tensor)",
                format!(
                    "{} tensors but {} group indices below {groups}",
                    lens.len(),
                    group.len()
                ),
            ));
        }
        let mut table: Vec<i32> = vec![];
        let mut len = 0usize;
        for (&n, &g) in lens.iter().zip(group) {
            // (A gap's blocks, all zeros, take the next tensor's group: zeros stay zeros.)
            let start = len.next_multiple_of(Self::ALIGN);
            table.resize((start + n).div_ceil(BLOCK), g as i32);
            len = start + n;
        }
        if table.is_empty() {
            table.push(0); // a buffer cannot be empty on every device
        }
        Ok(MultiTensor {
            block_group: ops.device().upload(&table)?,
            len,
            groups,
        })
    }

    /// The span's length in elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AdamW {
    /// The decay factor `1 - lr · weight_decay` of a group, as [`AdamW::update`] computes it
    /// (in f64, as PyTorch does on the host).
    fn decay(&self, lr: f32, weight_decay: f32) -> f32 {
        (1.0 - lr as f64 * weight_decay as f64) as f32
    }

    /// [`AdamW::update`] of every tensor of `layout` in one launch: `state`'s views span them
    /// all ([`kiln_runtime::Buffer::span`]), `rates[g]` is group `g`'s `(learning rate, weight
    /// decay)`. Gives the same results as one [`AdamW::update`] per tensor, bit for bit.
    pub fn update_multi(
        &self,
        ops: &Ops,
        layout: &MultiTensor,
        state: &mut ParamState<'_>,
        control: &StepControl,
        rates: &[(f32, f32)],
    ) -> Result<()> {
        const OP: &str = "adamw (multi-tensor)";
        let n = layout.len;
        check_state(OP, state, n)?;
        if rates.len() != layout.groups {
            return Err(Error::shape(
                OP,
                format!("{} groups' rates for {} groups", rates.len(), layout.groups),
            ));
        }
        if n == 0 {
            return Ok(());
        }
        let table: Vec<f32> = rates
            .iter()
            .flat_map(|&(lr, wd)| [lr, self.decay(lr, wd)])
            .collect();
        let rates = ops.device().upload(&table)?;
        let kernels = ["adamw_multi", "adamw_multi_f32"];
        self.launch(ops, kernels, state, control, n, |args| {
            args.input("group", &layout.block_group)
                .input("rates", &rates)
        })
    }
}

/// The device-side control of optimizer steps: the step's loss and gradient norm, accumulated
/// on the device, and the control block every [`AdamW::update`] of the step reads.
pub struct StepControl {
    /// One partial sum of squares per block of SQ_SUM_BLOCK gradient elements.
    partial: Buffer,
    /// Blocks of `partial` written this step (the next gradient's first block).
    blocks: usize,
    /// `[loss sum, predicted tokens]` of the step so far.
    loss: Buffer,
    /// The control block (see [`control`]); its t persists across steps.
    control: Buffer,
    /// `[_, _, 1 - beta1^t, sqrt(1 - beta2^t)]` for t = 0 ..= max_updates (t = 0 unused).
    bias: Buffer,
    max_updates: usize,
}

impl StepControl {
    /// State for steps of at most `max_updates` updates, over gradients of at most
    /// `grad_elements` elements in all (counting each tensor's last partial block in full:
    /// pass the tensors' lengths), with the betas of `adamw`.
    pub fn new(
        ops: &Ops,
        adamw: &AdamW,
        grad_lens: &[usize],
        max_updates: usize,
    ) -> Result<StepControl> {
        let blocks: usize = grad_lens.iter().map(|n| n.div_ceil(SQ_SUM_BLOCK)).sum();
        let mut bias = vec![0.0f32; 2 * (max_updates + 1)];
        for t in 1..=max_updates {
            // In f64 as torch.optim.AdamW computes them (it raises the f32-rounded betas).
            let t32 = t as i32;
            bias[2 * t] = (1.0 - (adamw.beta1 as f64).powi(t32)) as f32;
            bias[2 * t + 1] = (1.0 - (adamw.beta2 as f64).powi(t32)).sqrt() as f32;
        }
        let device = ops.device();
        let mut control = device.alloc(DType::F32, control::LEN)?;
        control.zero()?;
        let mut loss = device.alloc(DType::F32, 2)?;
        loss.zero()?;
        Ok(StepControl {
            partial: device.alloc(DType::F32, blocks.max(1))?,
            blocks: 0,
            loss,
            control,
            bias: device.upload(&bias)?,
            max_updates,
        })
    }

    /// Starts a step: no loss, no gradients yet (t carries over). The partial sums start at
    /// zero, so blocks that [`StepControl::reserve_grad`] skips add nothing.
    pub fn begin(&mut self) -> Result<()> {
        self.blocks = 0;
        self.partial.zero()?;
        Ok(self.loss.zero()?)
    }

    /// Keeps the blocks of a gradient of `len` elements that another rank sums (ZeRO: the
    /// gradient's owner), leaving them zero here; all-reducing [`StepControl::partials_mut`]
    /// then fills them, and every rank's norm is the same.
    pub fn reserve_grad(&mut self, len: usize) -> Result<()> {
        let programs = len.div_ceil(SQ_SUM_BLOCK);
        self.check_room(programs)?;
        self.blocks += programs;
        Ok(())
    }

    /// Refuses `programs` more blocks of partial sums than the step control has room for.
    fn check_room(&self, programs: usize) -> Result<()> {
        if self.blocks + programs > self.partial.len() {
            return Err(Error::shape(
                "grad norm",
                format!(
                    "more gradient elements than the {} blocks of {SQ_SUM_BLOCK} this step control was made for",
                    self.partial.len()
                ),
            ));
        }
        Ok(())
    }

    /// The per-block sums of squares of the step's gradients (f32), to all-reduce across ranks
    /// before [`StepControl::finish`] when each rank summed only some gradients.
    pub fn partials_mut(&mut self) -> &mut Buffer {
        &mut self.partial
    }

    /// The step's `[loss sum, predicted tokens]` so far (f32), to all-reduce across ranks
    /// before [`StepControl::finish`].
    pub fn loss_mut(&mut self) -> &mut Buffer {
        &mut self.loss
    }

    /// Adds a micro-batch's loss totals (f32 `[sum of losses, counted tokens, ..]`, as
    /// cut cross-entropy leaves them) to the step's.
    pub fn add_loss(&mut self, ops: &Ops, totals: &Buffer) -> Result<()> {
        if totals.dtype() != DType::F32 || totals.len() < 2 {
            return Err(Error::shape(
                "step loss",
                format!(
                    "`totals` must be at least 2 x f32, got {} x {}",
                    totals.len(),
                    totals.dtype()
                ),
            ));
        }
        let config = KernelConfig::new(FILE, "step_loss_add").warps(1);
        let args = Args::new()
            .input("totals", totals)
            .in_out("loss", &mut self.loss);
        ops.launch(&config, [1, 1, 1], &args)
    }

    /// Adds `grad`'s sum of squares (f32 gradient) to the step's.
    pub fn add_grad<'a>(&mut self, ops: &Ops, grad: impl Into<BufferView<'a>>) -> Result<()> {
        let grad = grad.into();
        expect("grad norm", "grad", &grad, DType::F32, grad.len())?;
        let config = KernelConfig::new(FILE, "grad_sq_partial")
            .int("BLOCK", SQ_SUM_BLOCK)
            .warps(8);
        let programs = config.programs("BLOCK", grad.len());
        self.check_room(programs)?;
        let args = Args::new()
            .input("grad", grad)
            .output("partial", &mut self.partial)
            .i64("n", grad.len() as i64)
            .i32("first_block", self.blocks as i32);
        ops.launch(&config, [programs, 1, 1], &args)?;
        self.blocks += programs;
        Ok(())
    }

    /// Writes the control block from the step's norm and loss: clipping to `max_norm` (`None`:
    /// no clipping), applied only if both are finite and `skip` is false, t advanced if applied.
    pub fn finish(&mut self, ops: &Ops, max_norm: Option<f32>, skip: bool) -> Result<()> {
        let config = KernelConfig::new(FILE, "step_control")
            .int("BLOCK", 1024)
            .warps(8);
        let args = Args::new()
            .input("partial", &self.partial)
            .i32("blocks", self.blocks as i32)
            .input("loss", &self.loss)
            .in_out("control", &mut self.control)
            .input("bias", &self.bias)
            .f32("max_norm", max_norm.unwrap_or(f32::INFINITY))
            .i32("skip", i32::from(skip))
            .i32("max_t", self.max_updates as i32);
        ops.launch(&config, [1, 1, 1], &args)
    }

    /// The control block (f32, [`control::LEN`]; read it with `read_later` to log the step).
    pub fn control(&self) -> &Buffer {
        &self.control
    }

    /// Sets t, the updates applied so far (resuming a run). Waits for the device.
    pub fn set_updates(&mut self, updates: u32) -> Result<()> {
        let mut block = self.control.download::<f32>()?;
        block[control::UPDATES] = updates as f32;
        Ok(self.control.write(&block)?)
    }
}

//! The optimizer of training: AdamW over named f32 tensors in parameter groups (LoRA+ is a group
//! whose learning rate is `ratio ×` the base rate), global-norm gradient clipping computed on the
//! device, and learning-rate schedules. Every update is a Kiln kernel (`adamw.kiln`), and so is
//! the decision to skip a step whose loss or gradient is not finite: the host queues a whole
//! step without waiting and reads its metrics (loss, norm, skipped) later
//! ([`Optimizer::read_step`]).
//!
//! Each tensor has f32 moments, and f32 master weights unless the model computes in f32, in
//! which case the model's own weights are the masters and are updated in place.

use std::fmt;
use std::str::FromStr;

use kiln_compiler::DType;
use kiln_ops::adamw::{control, AdamW, MultiTensor, ParamState, StepControl};
use kiln_ops::Ops;
use kiln_runtime::collective::Communicator;
use kiln_runtime::{Buffer, PendingRead};

use crate::precision;
use crate::{Error, HostTensor, Result};

/// How the learning rate moves over training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

impl FromStr for ScheduleKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(ScheduleKind::Constant),
            "linear" => Ok(ScheduleKind::Linear),
            "cosine" => Ok(ScheduleKind::Cosine),
            _ => Err(format!(
                "unknown schedule `{s}`: expected constant, linear or cosine"
            )),
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScheduleKind::Constant => "constant",
            ScheduleKind::Linear => "linear",
            ScheduleKind::Cosine => "cosine",
        })
    }
}

/// A learning-rate schedule: a linear warmup from `lr / warmup` to `lr` over the first
/// `warmup` steps, then constant, or a linear or cosine decay towards `floor × lr`, which it
/// would reach one step after the last (so the last update is not wasted at a zero rate).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub warmup: usize,
    pub total: usize,
    /// The final rate as a fraction of the peak (0 decays to zero).
    pub floor: f64,
}

impl Schedule {
    /// The multiplier of the peak learning rate at step `step` (1-based).
    pub fn factor(&self, step: usize) -> f64 {
        if step <= self.warmup {
            return step as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup - 1) as f64 / span).min(1.0);
        let shape = match self.kind {
            ScheduleKind::Constant => return 1.0,
            ScheduleKind::Linear => 1.0 - progress,
            ScheduleKind::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        self.floor + (1.0 - self.floor) * shape
    }
}

/// AdamW's settings for a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimizerConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
    pub schedule: Schedule,
}

impl OptimizerConfig {
    /// Checks the values a user gives.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f64| Err(Error::Invalid(format!("{what} {v}")));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("the learning rate must be a positive number, not", self.lr);
        }
        for (name, b) in [("adam beta1", self.beta1), ("adam beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(&format!("{name} must be in [0, 1), not"), b);
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("adam eps must be positive, not", self.eps);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight decay must be 0 or more, not", self.weight_decay);
        }
        if let Some(n) = self.max_grad_norm {
            if !(n.is_finite() && n > 0.0) {
                return bad(
                    "max grad norm must be positive (0 turns clipping off), not",
                    n,
                );
            }
        }
        if !(0.0..=1.0).contains(&self.schedule.floor) {
            return bad(
                "the schedule's floor must be in [0, 1], not",
                self.schedule.floor,
            );
        }
        Ok(())
    }
}

/// One trainable tensor as the optimizer is told of it.
pub struct ParamSpec {
    /// Its name in checkpoints (Hugging Face's or PEFT's).
    pub name: String,
    /// Its initial f32 value.
    pub initial: HostTensor,
    /// Its learning rate as a multiple of the scheduled one (LoRA+'s B: the ratio).
    pub lr_multiplier: f64,
    /// Whether weight decay applies to it.
    pub decay: bool,
}

/// One trainable tensor's optimizer state.
struct Slot {
    name: String,
    shape: Vec<usize>,
    len: usize,
    lr_multiplier: f64,
    decay: bool,
    /// The state this rank holds; `None` where another rank owns the tensor (ZeRO-1).
    local: Option<Local>,
}

/// The optimizer state of a tensor this rank updates.
struct Local {
    /// f32 master weights when the model computes in another type.
    master: Option<Buffer>,
    exp_avg: Buffer,
    exp_avg_sq: Buffer,
}

/// The multi-tensor layout of the state and the parameter groups: the distinct (learning-rate
/// multiple, decays) pairs of the tensors.
struct Multi {
    layout: MultiTensor,
    groups: Vec<(f64, bool)>,
}

/// The full optimizer state by name, gathered to one rank ([`Optimizer::gather`]): the f32
/// masters and the moments (`exp_avg.NAME`, `exp_avg_sq.NAME`).
pub struct FullState {
    pub masters: Vec<(String, HostTensor)>,
    pub moments: Vec<(String, HostTensor)>,
}

/// AdamW over a list of tensors, in a fixed order: every call passes the model's parameters
/// and gradients in the order the optimizer was made with.
///
/// The masters and moments of all tensors are parts of one allocation each
/// ([`kiln_runtime::Device::alloc_parts`], aligned to [`MultiTensor::ALIGN`]); when the
/// gradients and the model's tensors are laid out the same way ([`lay_out`]) the norm and the
/// update are one launch each for the whole model, not two per tensor.
pub struct Optimizer {
    pub config: OptimizerConfig,
    adamw: AdamW,
    /// The type the model computes in (f32: the model's weights are the masters).
    compute: DType,
    slots: Vec<Slot>,
    control: StepControl,
    /// The tensors' layout as one span, and each tensor's group, while every tensor's state
    /// is one of the parts (not after [`Optimizer::keep_only`]).
    multi: Option<Multi>,
    /// Updates applied so far (AdamW's `t`; a skipped step does not count), as of the last
    /// step whose metrics were read ([`StepReport`]); the device's own count is ahead of it
    /// while steps are in flight.
    pub updates: u32,
}

/// What the device decided about a step, read back after it ran.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// The sum of the step's per-token losses, as the device summed them.
    pub loss_sum: f64,
    /// The global L2 norm of the gradients, before clipping.
    pub grad_norm: f64,
    /// Whether the update was skipped (non-finite loss or gradient, or nothing to learn).
    pub skipped: bool,
    /// Updates applied so far, this step included.
    pub updates: u32,
}

impl StepReport {
    /// Decodes a control block read back from [`Optimizer::read_step`].
    pub fn from_control(block: &[f32]) -> StepReport {
        StepReport {
            loss_sum: f64::from(block[control::LOSS_SUM]),
            grad_norm: f64::from(block[control::GRAD_NORM]),
            skipped: block[control::APPLY] == 0.0,
            updates: block[control::UPDATES] as u32,
        }
    }
}

impl Optimizer {
    /// State for `params` on `ops`' device: zero moments, and f32 masters from their initial
    /// values when `compute` (the model's precision) is not f32.
    pub fn new(
        ops: &Ops,
        config: OptimizerConfig,
        params: Vec<ParamSpec>,
        compute: DType,
    ) -> Result<Optimizer> {
        config.validate()?;
        let device = ops.device();
        let lens: Vec<usize> = params.iter().map(|p| p.initial.len()).collect();
        let align = MultiTensor::ALIGN;
        let parts = || device.alloc_parts(DType::F32, &lens, align);
        let mut masters = match compute {
            DType::F32 => None,
            _ => Some(parts()?.into_iter()),
        };
        let (exp_avg, exp_avg_sq) = (parts()?, parts()?);
        let mut slots = Vec::with_capacity(params.len());
        let mut groups: Vec<(f64, bool)> = vec![];
        let mut group_of = Vec::with_capacity(params.len());
        for ((p, exp_avg), exp_avg_sq) in params.into_iter().zip(exp_avg).zip(exp_avg_sq) {
            let master = match &mut masters {
                Some(parts) => {
                    let mut m = parts.next().expect("one part per tensor");
                    m.write(&p.initial.data)?;
                    Some(m)
                }
                None => None,
            };
            let key = (p.lr_multiplier, p.decay);
            let g = match groups.iter().position(|&k| k == key) {
                Some(g) => g,
                None => {
                    groups.push(key);
                    groups.len() - 1
                }
            };
            group_of.push(g as u32);
            slots.push(Slot {
                name: p.name,
                shape: p.initial.shape.clone(),
                len: p.initial.len(),
                lr_multiplier: p.lr_multiplier,
                decay: p.decay,
                local: Some(Local {
                    master,
                    exp_avg,
                    exp_avg_sq,
                }),
            });
        }
        let layout = MultiTensor::new(ops, &lens, &group_of, groups.len())?;
        let multi = Some(Multi { layout, groups });
        let adamw = AdamW {
            beta1: config.beta1 as f32,
            beta2: config.beta2 as f32,
            eps: config.eps as f32,
            weight_decay: config.weight_decay as f32,
        };
        let control = StepControl::new(ops, &adamw, &lens, config.schedule.total.max(1))?;
        Ok(Optimizer {
            config,
            adamw,
            compute,
            slots,
            control,
            multi,
            updates: 0,
        })
    }

    /// The names of the tensors, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.name.as_str())
    }

    /// Starts a step: its loss and gradient norm from zero.
    pub fn begin_step(&mut self) -> Result<()> {
        Ok(self.control.begin()?)
    }

    /// Adds a micro-batch's loss totals (on the device) to the step's.
    pub fn add_loss(&mut self, ops: &Ops, totals: &Buffer) -> Result<()> {
        Ok(self.control.add_loss(ops, totals)?)
    }

    /// Queues the step's update at the scheduled step `step` (1-based): the global norm of
    /// `grads` and the clipping factor, then AdamW on every tensor, all on the device. The
    /// device skips the update if the step's loss or gradient norm is not finite, or if `skip`
    /// (nothing was predicted). `params` are the model's tensors (written: bf16 copies of the
    /// masters, or the f32 weights in place).
    pub fn step(
        &mut self,
        ops: &Ops,
        params: Vec<&mut Buffer>,
        grads: &[&Buffer],
        step: usize,
        skip: bool,
    ) -> Result<()> {
        self.add_grad_norms(ops, grads)?;
        let mut params = params;
        self.finish_step(ops, &mut params, grads, step, skip)
    }

    /// The first half of [`Optimizer::step`]: the sums of squares of the gradients of the
    /// tensors this rank updates (the others' blocks stay zero until the partial sums are
    /// all-reduced: [`Optimizer::norm_partials_mut`]).
    pub fn add_grad_norms(&mut self, ops: &Ops, grads: &[&Buffer]) -> Result<()> {
        self.check_len(grads.len())?;
        if let Some(span) = self.multi.as_ref().and_then(|m| spanned(&m.layout, grads)) {
            return Ok(self.control.add_grad(ops, &*span)?);
        }
        for (slot, g) in self.slots.iter().zip(grads) {
            match slot.local {
                Some(_) => self.control.add_grad(ops, *g)?,
                None => self.control.reserve_grad(slot.len)?,
            }
        }
        Ok(())
    }

    /// The step's per-block sums of squares of the gradients (f32), to all-reduce across
    /// ranks between [`Optimizer::add_grad_norms`] and [`Optimizer::finish_step`] when each
    /// rank holds only some of the state (ZeRO-1).
    pub fn norm_partials_mut(&mut self) -> &mut Buffer {
        self.control.partials_mut()
    }

    /// The step's `[loss sum, predicted tokens]` (f32), to all-reduce across ranks before
    /// [`Optimizer::finish_step`].
    pub fn loss_mut(&mut self) -> &mut Buffer {
        self.control.loss_mut()
    }

    /// The second half of [`Optimizer::step`]: the control block from the norm and loss, then
    /// AdamW on every tensor this rank holds state for (`params` and `grads` are all of them).
    pub fn finish_step(
        &mut self,
        ops: &Ops,
        params: &mut [&mut Buffer],
        grads: &[&Buffer],
        step: usize,
        skip: bool,
    ) -> Result<()> {
        self.check_len(params.len())?;
        self.check_len(grads.len())?;
        let max = self.config.max_grad_norm.map(|n| n as f32);
        self.control.finish(ops, max, skip)?;
        if skip {
            return Ok(());
        }
        let lr = self.config.lr * self.config.schedule.factor(step);
        if self.update_multi(ops, params, grads, lr)? {
            return Ok(());
        }
        for ((slot, param), grad) in self.slots.iter_mut().zip(params.iter_mut()).zip(grads) {
            let Some(local) = &mut slot.local else {
                continue; // another rank's: its weights arrive by broadcast
            };
            let adamw = AdamW {
                weight_decay: if slot.decay {
                    self.adamw.weight_decay
                } else {
                    0.0
                },
                ..self.adamw
            };
            let (m, v) = (&mut local.exp_avg, &mut local.exp_avg_sq);
            let mut state = param_state(local.master.as_mut(), param, grad, m, v);
            let group_lr = (lr * slot.lr_multiplier) as f32;
            adamw.update(ops, &mut state, &self.control, group_lr)?;
        }
        Ok(())
    }

    /// Whether the step's norm and update run as one launch each: `params` and `grads` (in
    /// the optimizer's order) are laid out as the state ([`lay_out`]), which is all on this
    /// rank.
    pub fn laid_out(&self, params: &[&Buffer], grads: &[&Buffer]) -> bool {
        self.multi.as_ref().is_some_and(|m| {
            spanned(&m.layout, grads).is_some() && spanned(&m.layout, params).is_some()
        })
    }

    /// AdamW on every tensor in one launch, if the gradients and `params` are laid out as the
    /// state (see [`lay_out`]); returns whether it was queued.
    fn update_multi(
        &mut self,
        ops: &Ops,
        params: &mut [&mut Buffer],
        grads: &[&Buffer],
        lr: f64,
    ) -> Result<bool> {
        let Some(multi) = &self.multi else {
            return Ok(false);
        };
        let Some(grad) = spanned(&multi.layout, grads) else {
            return Ok(false);
        };
        let Some(mut param) = spanned_mut(&multi.layout, params) else {
            return Ok(false);
        };
        let locals: Vec<&mut Local> = self
            .slots
            .iter_mut()
            .map(|s| {
                s.local
                    .as_mut()
                    .expect("all state is local while laid out as one span")
            })
            .collect();
        let (mut masters, mut exp_avg, mut exp_avg_sq) = (vec![], vec![], vec![]);
        for local in locals {
            if let Some(m) = &mut local.master {
                masters.push(m);
            }
            exp_avg.push(&mut local.exp_avg);
            exp_avg_sq.push(&mut local.exp_avg_sq);
        }
        let span = |parts| {
            Buffer::span_mut(parts).ok_or_else(|| {
                Error::Invalid("the optimizer's state is not one span (internal error)".into())
            })
        };
        let (mut exp_avg, mut exp_avg_sq) = (span(&mut exp_avg)?, span(&mut exp_avg_sq)?);
        let mut master = match masters.is_empty() {
            true => None,
            false => Some(span(&mut masters)?),
        };
        let mut state = param_state(
            master.as_deref_mut(),
            &mut param,
            &grad,
            &mut exp_avg,
            &mut exp_avg_sq,
        );
        let rates: Vec<(f32, f32)> = multi
            .groups
            .iter()
            .map(|&(multiplier, decay)| {
                let wd = if decay { self.adamw.weight_decay } else { 0.0 };
                ((lr * multiplier) as f32, wd)
            })
            .collect();
        self.adamw
            .update_multi(ops, &multi.layout, &mut state, &self.control, &rates)?;
        Ok(true)
    }

    /// Queues the read-back of the last step's decisions (decode them with
    /// [`StepReport::from_control`]); waiting for it is the caller's choice.
    pub fn read_step(&self) -> Result<PendingRead<f32>> {
        Ok(self.control.control().read_later()?)
    }

    /// Sets the count of applied updates (resuming a run), on the host and the device.
    pub fn set_updates(&mut self, updates: u32) -> Result<()> {
        self.control.set_updates(updates)?;
        self.updates = updates;
        Ok(())
    }

    /// The learning rate of the base group at step `step`.
    pub fn lr(&self, step: usize) -> f64 {
        self.config.lr * self.config.schedule.factor(step)
    }

    /// The f32 weights of every tensor: the masters, or `params` (the model's f32 weights)
    /// where the model's own weights are the masters. With sharded state (ZeRO-1) in bf16
    /// this rank lacks others' masters: use [`Optimizer::gather`].
    pub fn masters(&self, params: &[&Buffer]) -> Result<Vec<(String, HostTensor)>> {
        self.check_len(params.len())?;
        self.slots
            .iter()
            .zip(params)
            .map(|(slot, param)| {
                let buffer = match &slot.local {
                    Some(Local {
                        master: Some(m), ..
                    }) => m,
                    _ if self.compute == DType::F32 => param,
                    _ => {
                        return Err(Error::Invalid(format!(
                            "`{}`'s master weights are another rank's (gather them)",
                            slot.name
                        )))
                    }
                };
                Ok((
                    slot.name.clone(),
                    HostTensor::new(slot.shape.clone(), precision::download(buffer)?),
                ))
            })
            .collect()
    }

    /// Replaces every master with `values` (by name; shapes flattened) and writes the model's
    /// copies in `params` from them, exactly as an update would have rounded them.
    pub fn load_masters(
        &mut self,
        params: Vec<&mut Buffer>,
        values: &dyn Fn(&str) -> Result<Vec<f32>>,
    ) -> Result<()> {
        self.check_len(params.len())?;
        for (slot, param) in self.slots.iter_mut().zip(params) {
            let data = values(&slot.name)?;
            if data.len() != slot.len {
                return Err(Error::Invalid(format!(
                    "`{}`: {} values for a tensor of {}",
                    slot.name,
                    data.len(),
                    slot.len
                )));
            }
            let host = HostTensor::new(slot.shape.clone(), data);
            if let Some(Local {
                master: Some(master),
                ..
            }) = &mut slot.local
            {
                master.write(&host.data)?;
            }
            // In place: the tensor keeps its part of the span (see `lay_out`).
            precision::write(param, &host.data)?;
        }
        Ok(())
    }

    /// The moments as named host tensors: `exp_avg.NAME` and `exp_avg_sq.NAME`.
    pub fn moments(&self) -> Result<Vec<(String, HostTensor)>> {
        let mut out = vec![];
        for slot in &self.slots {
            let Some(local) = &slot.local else {
                return Err(Error::Invalid(format!(
                    "`{}`'s moments are another rank's (gather them)",
                    slot.name
                )));
            };
            for (kind, b) in [
                ("exp_avg", &local.exp_avg),
                ("exp_avg_sq", &local.exp_avg_sq),
            ] {
                out.push((
                    format!("{kind}.{}", slot.name),
                    HostTensor::new(slot.shape.clone(), precision::download(b)?),
                ));
            }
        }
        Ok(out)
    }

    /// Replaces the moments with `values(name)` for the names of [`Optimizer::moments`].
    pub fn load_moments(&mut self, values: &dyn Fn(&str) -> Result<Vec<f32>>) -> Result<()> {
        for slot in &mut self.slots {
            let Some(local) = &mut slot.local else {
                continue; // another rank's
            };
            for (kind, b) in [
                ("exp_avg", &mut local.exp_avg),
                ("exp_avg_sq", &mut local.exp_avg_sq),
            ] {
                let name = format!("{kind}.{}", slot.name);
                let data = values(&name)?;
                if data.len() != slot.len {
                    return Err(Error::Invalid(format!(
                        "`{name}`: {} values for a tensor of {}",
                        data.len(),
                        slot.len
                    )));
                }
                b.write(&data)?;
            }
        }
        Ok(())
    }

    /// Bytes of optimizer state on the device (moments and masters).
    pub fn state_bytes(&self) -> usize {
        self.slots
            .iter()
            .filter_map(|s| s.local.as_ref().map(|l| (s.len, l)))
            .map(|(len, l)| len * 4 * (2 + usize::from(l.master.is_some())))
            .sum()
    }

    /// The number of elements of each tensor, in order.
    pub fn lens(&self) -> Vec<usize> {
        self.slots.iter().map(|s| s.len).collect()
    }

    /// Keeps the state of the tensors where `keep` is true only (ZeRO-1: the tensors this rank
    /// owns); the others' masters and moments are freed, and [`Optimizer::finish_step`] leaves
    /// those tensors to their owners.
    pub fn keep_only(&mut self, keep: &[bool]) -> Result<()> {
        self.check_len(keep.len())?;
        if keep.iter().all(|&k| k) {
            return Ok(()); // plain data parallelism: every rank updates everything
        }
        // The kept state moves out of the shared allocations, so the rest is freed.
        self.multi = None;
        for (slot, &k) in self.slots.iter_mut().zip(keep) {
            slot.local = match (k, slot.local.take()) {
                (true, Some(local)) => Some(Local {
                    master: local.master.as_ref().map(own).transpose()?,
                    exp_avg: own(&local.exp_avg)?,
                    exp_avg_sq: own(&local.exp_avg_sq)?,
                }),
                _ => None,
            };
        }
        Ok(())
    }

    /// Gathers the full state to rank 0 from the tensors' owners (`owners[i]`, in order),
    /// through `comm`: every rank must call it. `params` are the model's tensors (the masters,
    /// when the model computes in f32, complete on every rank). Returns the state on rank 0,
    /// `None` elsewhere.
    pub fn gather(
        &mut self,
        comm: &dyn Communicator,
        owners: &[usize],
        params: &[&Buffer],
    ) -> Result<Option<FullState>> {
        self.check_len(owners.len())?;
        self.check_len(params.len())?;
        let root = comm.rank() == 0;
        let device = params
            .first()
            .map(|p| p.device().clone())
            .ok_or_else(|| Error::Invalid("no tensors to gather".into()))?;
        let mut masters = vec![];
        let mut moments = vec![];
        let f32_compute = self.compute == DType::F32;
        for ((slot, &owner), param) in self.slots.iter_mut().zip(owners).zip(params) {
            let shape = slot.shape.clone();
            let host = |b: &Buffer| -> Result<HostTensor> {
                Ok(HostTensor::new(shape.clone(), precision::download(b)?))
            };
            // The master (unless the model's weights are the masters) and the two moments, as
            // rank 0 receives them; only the owner holds them, and only if it is not rank 0
            // do they travel.
            let what = format!("the state of `{}`", slot.name);
            let mut fetched: Vec<HostTensor> = vec![];
            if owner == 0 || comm.rank() == owner {
                if let Some(local) = &mut slot.local {
                    let mut mine: Vec<&mut Buffer> = vec![];
                    if let Some(m) = &mut local.master {
                        mine.push(m);
                    }
                    mine.push(&mut local.exp_avg);
                    mine.push(&mut local.exp_avg_sq);
                    if owner != 0 {
                        comm.broadcast(&mut mine, owner, &what)?;
                    } else if root {
                        for b in mine {
                            fetched.push(host(b)?);
                        }
                    }
                } else if root {
                    return Err(Error::Invalid(format!(
                        "rank 0 owns `{}` but holds no state for it",
                        slot.name
                    )));
                }
            } else {
                let n = 2 + usize::from(!f32_compute);
                let mut temps = (0..n)
                    .map(|_| device.alloc(DType::F32, slot.len))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let mut refs: Vec<&mut Buffer> = temps.iter_mut().collect();
                comm.broadcast(&mut refs, owner, &what)?;
                comm.join()?;
                if root {
                    for b in &temps {
                        fetched.push(host(b)?);
                    }
                }
            }
            if !root {
                continue;
            }
            let mut fetched = fetched.into_iter();
            let missing = || Error::Invalid(format!("`{}`: state missing", slot.name));
            let master = if f32_compute {
                host(param)?
            } else {
                fetched.next().ok_or_else(missing)?
            };
            masters.push((slot.name.clone(), master));
            for kind in ["exp_avg", "exp_avg_sq"] {
                let m = fetched.next().ok_or_else(missing)?;
                moments.push((format!("{kind}.{}", slot.name), m));
            }
        }
        comm.join()?;
        Ok(root.then_some(FullState { masters, moments }))
    }

    fn check_len(&self, n: usize) -> Result<()> {
        if n != self.slots.len() {
            return Err(Error::Invalid(format!(
                "the optimizer holds {} tensors, {n} given",
                self.slots.len()
            )));
        }
        Ok(())
    }
}

/// What [`lay_out`] does with the buffers' contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contents {
    /// Copy them into the new parts (the model's tensors).
    Keep,
    /// The buffers are zero (fresh gradients): free them first, so that the old and the new
    /// allocations never coexist, and start from zeros.
    Zero,
}

/// Moves `buffers` (the gradients or the model's trained tensors, in the optimizer's order)
/// into parts of one allocation laid out as [`Optimizer`] lays out its state, so that a step's
/// norm and update run as one launch each for all of them. Without this (or where a buffer
/// was replaced since) the optimizer updates tensor by tensor. Call it before the optimizer's
/// state exists: with [`Contents::Keep`] the old and new copies coexist for a moment.
pub fn lay_out(buffers: Vec<&mut Buffer>, contents: Contents) -> Result<()> {
    let Some(first) = buffers.first() else {
        return Ok(());
    };
    let (device, dtype) = (first.device().clone(), first.dtype());
    if buffers.iter().any(|b| b.dtype() != dtype) {
        return Ok(()); // mixed types cannot share one span: tensor by tensor
    }
    let lens: Vec<usize> = buffers.iter().map(|b| b.len()).collect();
    // On the CPU freed blocks go to a pool of the process that keeps them for reuse; these
    // never are, so they go back to the allocator (at setup the pool holds nothing else).
    let release = || {
        if !device.is_gpu() {
            kiln_runtime::trim_host_pool();
        }
    };
    let mut buffers = buffers;
    if contents == Contents::Zero {
        for b in &mut buffers {
            **b = device.alloc(dtype, 0)?;
        }
        release();
    }
    let parts = device.alloc_parts(dtype, &lens, MultiTensor::ALIGN)?;
    for (buffer, mut part) in buffers.into_iter().zip(parts) {
        if contents == Contents::Keep {
            part.copy_from(buffer)?;
        }
        *buffer = part;
    }
    release();
    Ok(())
}

/// `buffers` as one span laid out as `layout`, if they are.
fn spanned<'a>(layout: &MultiTensor, buffers: &[&'a Buffer]) -> Option<kiln_runtime::Span<'a>> {
    let aligned = buffers.first()?.part_alignment() == Some(MultiTensor::ALIGN);
    Buffer::span(buffers).filter(|b| aligned && b.len() == layout.len())
}

/// [`spanned`], to write.
fn spanned_mut<'a>(
    layout: &MultiTensor,
    buffers: &'a mut [&mut Buffer],
) -> Option<kiln_runtime::SpanMut<'a>> {
    let aligned = buffers.first()?.part_alignment() == Some(MultiTensor::ALIGN);
    Buffer::span_mut(buffers).filter(|b| aligned && b.len() == layout.len())
}

/// One update's tensors: the f32 `master` weights with the model's `param` as their copy, or,
/// without masters, `param` itself (f32 training).
fn param_state<'a>(
    master: Option<&'a mut Buffer>,
    param: &'a mut Buffer,
    grad: &'a Buffer,
    exp_avg: &'a mut Buffer,
    exp_avg_sq: &'a mut Buffer,
) -> ParamState<'a> {
    let (param, param_copy) = match master {
        Some(master) => (master.view_mut(), Some(param.view_mut())),
        None => (param.view_mut(), None),
    };
    ParamState {
        param,
        grad: grad.view(),
        exp_avg: exp_avg.view_mut(),
        exp_avg_sq: exp_avg_sq.view_mut(),
        param_copy,
    }
}

/// A copy of `buffer` in an allocation of its own.
fn own(buffer: &Buffer) -> Result<Buffer> {
    let mut copy = buffer.device().alloc_uninit(buffer.dtype(), buffer.len())?;
    copy.copy_from(buffer)?;
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_warm_up_then_decay_to_the_floor() {
        let s = |kind| Schedule {
            kind,
            warmup: 4,
            total: 14,
            floor: 0.1,
        };
        for kind in [
            ScheduleKind::Constant,
            ScheduleKind::Linear,
            ScheduleKind::Cosine,
        ] {
            let s = s(kind);
            assert_eq!(s.factor(1), 0.25);
            assert_eq!(s.factor(4), 1.0);
        }
        assert_eq!(s(ScheduleKind::Constant).factor(14), 1.0);
        // After the warmup the decay starts at the peak: progress (step - warmup - 1) / 10.
        let linear = s(ScheduleKind::Linear);
        assert_eq!(linear.factor(5), 1.0);
        assert!((linear.factor(10) - (0.1 + 0.9 * 0.5)).abs() < 1e-12);
        assert!((linear.factor(14) - (0.1 + 0.9 * 0.1)).abs() < 1e-12);
        let cosine = s(ScheduleKind::Cosine);
        assert_eq!(cosine.factor(5), 1.0);
        assert!((cosine.factor(10) - (0.1 + 0.9 * 0.5)).abs() < 1e-12);
        assert!(cosine.factor(14) > 0.1, "the last step still learns");
        assert!(
            cosine.factor(7) > linear.factor(7),
            "cosine decays slower at first"
        );
        // Past the end the floor holds.
        assert!((cosine.factor(20) - 0.1).abs() < 1e-12);
        let no_warmup = Schedule {
            warmup: 0,
            ..linear
        };
        assert_eq!(no_warmup.factor(1), 1.0);
    }
}

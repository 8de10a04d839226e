//! [`Trainer`]: full fine-tuning or LoRA/LoRA+ of a [`Model`] on token sequences.
//!
//! A step (see [`Trainer::step`]):
//! ```text
//! micro-batches = the next BFD bins of the epoch (--max-seq-len each) within --tokens-per-step
//! N = predicted tokens of all micro-batches
//! for each micro-batch i (n_i predicted):  forward; backward with dloss = n_i / N
//!     → gradients of Σ token losses / N, the step's loss, however the tokens are split
//! norm = ‖g‖ (on the device)   skip if the loss or norm is not finite, else AdamW (clipped)
//! ```
//! With [`Trainer::set_data_parallel`] the trainer is one rank of a data-parallel run (see
//! [`crate::data_parallel`]): the step is the global one, this rank trains its share of the
//! micro-batches, gradients and the loss are summed across ranks before the update (which is
//! then the same on every rank), and only rank 0 writes metrics, checkpoints and outputs.
//!
//! The skip decision, the clipping and Adam's step count live on the device, so the host queues
//! a whole step without waiting for the GPU ([`Trainer::submit`]) and reads its metrics later
//! ([`Trainer::collect`]); [`Trainer::run`] keeps one step queued ahead of the one it reads.
//! The trainer owns the optimizer state and the gradients; the model owns the weights it
//! computes with (and, for LoRA, the adapters'). Everything random is derived from the seed and
//! the step, so a checkpoint's step and data cursor are the whole random state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use kiln_runtime::{Buffer, PendingRead};

use crate::adapters::{Lora, LoraSpec};
use crate::batch::{Batch, Sequence};
use crate::checkpoint::{self, CheckpointData, TrainerState};
use crate::data_parallel::{self, DataParallel, RankState};
use crate::data_plan::{predicted, DataPlan, Examples};
use crate::eval::evaluate;
use crate::metrics::{peak_resident_bytes, MetricsLog, StepMetrics};
use crate::model::{GradsReady, Model, Pass};
use crate::optim::{self, Contents, FullState, Optimizer, OptimizerConfig, ParamSpec, StepReport};
use crate::params::Weights;
use crate::rng::{derive, SplitMix64};
use crate::weights::SafeTensors;
use crate::{Error, HostTensor, Result};

/// Steps in a row with a non-finite loss or gradient after which training stops.
pub const MAX_CONSECUTIVE_SKIPS: usize = 5;

/// LoRA's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraOptions {
    /// Rank, alpha, rsLoRA, dropout and targets of fresh adapters (of a loaded adapter, only
    /// the dropout is used: the rest is the adapter's).
    pub spec: LoraSpec,
    /// LoRA+: B's learning rate is `plus_ratio ×` A's (1 is plain LoRA).
    pub plus_ratio: f64,
    /// Start from this PEFT adapter instead of fresh adapters.
    pub adapter: Option<PathBuf>,
}

/// How long to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    Steps(usize),
    Epochs(usize),
}

/// Everything that decides a run besides the model and the data.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    /// `None`: full fine-tuning.
    pub lora: Option<LoraOptions>,
    /// AdamW and the schedule; the schedule's `total` is set from `length`.
    pub optimizer: OptimizerConfig,
    pub max_seq_len: usize,
    pub tokens_per_step: usize,
    pub length: Length,
    /// Warmup steps of the schedule (`None`: 3% of the steps, at least 1).
    pub warmup_steps: Option<usize>,
    pub seed: u64,
    /// Recompute each block's activations in the backward instead of keeping them.
    pub recompute: bool,
    /// Evaluate every this many steps (0: never; always at the end when there is eval data).
    pub eval_every: usize,
    /// Save a checkpoint every this many steps (0: only when stopped early).
    pub save_every: usize,
    /// Checkpoints kept (0: all).
    pub keep: usize,
}

/// The gradients of what is trained.
enum Gradients {
    Full(Box<Weights<Buffer>>),
    Lora(Lora<Buffer>),
}

impl Gradients {
    /// Every gradient, in the optimizer's order.
    fn buffers(&self) -> Vec<&Buffer> {
        let named = match self {
            Gradients::Full(g) => g.named(),
            Gradients::Lora(g) => g.named(),
        };
        named.into_iter().map(|(_, b)| b).collect()
    }

    /// Every gradient, mutably, in the optimizer's order.
    fn buffers_mut(&mut self) -> Vec<&mut Buffer> {
        match self {
            Gradients::Full(g) => g.all_mut(),
            Gradients::Lora(g) => g.all_mut(),
        }
    }
}

/// The model's trained tensors, in the optimizer's order.
fn params_of<'m>(model: &'m Model, grads: &Gradients) -> Vec<&'m Buffer> {
    match grads {
        Gradients::Full(_) => model.weights.named().into_iter().map(|(_, b)| b).collect(),
        Gradients::Lora(_) => match &model.lora {
            Some(lora) => lora.weights.named().into_iter().map(|(_, b)| b).collect(),
            None => vec![],
        },
    }
}

/// The model's trained tensors (its weights, or its adapters), in the optimizer's order.
fn trained_params<'m>(model: &'m mut Model, grads: &Gradients) -> Vec<&'m mut Buffer> {
    match (&mut model.lora, grads) {
        (Some(lora), Gradients::Lora(_)) => lora.weights.all_mut(),
        _ => model.weights.all_mut(),
    }
}

/// How a call of [`Trainer::run`] ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RunEnd {
    /// Every step done; the outputs are written (the path of `adapter/` or `model/`).
    Finished { output: PathBuf },
    /// Stopped by the caller's flag (a signal); a checkpoint was written.
    Interrupted { checkpoint: PathBuf },
}

/// A step queued on the device whose metrics are not read yet ([`Trainer::collect`]).
pub struct PendingStep {
    step: usize,
    report: PendingRead<f32>,
    /// The number of ranks that asked to stop when they queued this step (data parallel).
    stop_votes: Option<PendingRead<f32>>,
    /// Predicted and input tokens, and micro-batches, counted on the host.
    tokens: usize,
    input_tokens: usize,
    micro_batches: usize,
    submitted: Instant,
}

impl PendingStep {
    /// The step's number (1-based).
    pub fn step(&self) -> usize {
        self.step
    }
}

/// A training run.
pub struct Trainer {
    pub model: Model,
    /// The model folder the run started from (its config and tokenizer go with full outputs).
    base_dir: PathBuf,
    pub options: TrainOptions,
    optimizer: Optimizer,
    grads: Gradients,
    pub plan: DataPlan,
    eval: Option<Vec<Sequence>>,
    pub state: TrainerState,
    pub total_steps: usize,
    /// When the last step's metrics were read (a step's time runs from there).
    last_collect: Option<Instant>,
    /// This trainer's part in a data-parallel run, if it is one.
    dist: Option<RankState>,
    /// Data parallel: whether this rank asks to stop with the next step it queues.
    stop_vote: bool,
    /// Data parallel: whether some rank asked to stop in a step collected since: every rank
    /// learns it from the same step, so all stop after the same one.
    stop_agreed: bool,
}

impl Trainer {
    /// Sets up a run of `model` (loaded from `base_dir`, whose safetensors give full
    /// fine-tuning its f32 masters) on `examples` (fitted to `max_seq_len`: see
    /// [`Examples::prepare`]).
    pub fn new(
        model: Model,
        base_dir: &Path,
        options: TrainOptions,
        examples: Examples,
        eval: Option<Vec<Sequence>>,
    ) -> Result<Trainer> {
        let mut file: Option<SafeTensors> = None;
        let masters = |name: &str| match &file {
            Some(f) => f.get(name),
            None => file.insert(SafeTensors::open(base_dir)?).get(name),
        };
        Trainer::with_masters(model, base_dir, masters, options, examples, eval)
    }

    /// [`Trainer::new`] with full fine-tuning's f32 masters from `master(hugging_face_name)`
    /// (a model whose weights are not in `base_dir`, e.g. drawn at random); LoRA never asks.
    pub fn with_masters(
        mut model: Model,
        base_dir: &Path,
        mut master: impl FnMut(&str) -> Result<HostTensor>,
        mut options: TrainOptions,
        examples: Examples,
        eval: Option<Vec<Sequence>>,
    ) -> Result<Trainer> {
        let plan = DataPlan::new(
            examples,
            options.tokens_per_step,
            options.max_seq_len,
            options.seed,
        )?;
        let total_steps = match options.length {
            Length::Steps(n) => n,
            Length::Epochs(e) => e * plan.steps_per_epoch(),
        };
        if total_steps == 0 {
            return Err(Error::Invalid("training needs at least one step".into()));
        }
        options.optimizer.schedule.total = total_steps;
        options.optimizer.schedule.warmup = options
            .warmup_steps
            .unwrap_or_else(|| ((total_steps as f64 * 0.03).round() as usize).max(1));
        options.optimizer.validate()?;
        let ops = model.ops().clone();
        let compute = model.precision.dtype();
        let (params, grads) = match &options.lora {
            None => {
                let params = model
                    .weights
                    .named()
                    .into_iter()
                    .map(|(name, _)| {
                        let initial = master(&name)?;
                        Ok(ParamSpec {
                            decay: initial.shape.len() >= 2,
                            name,
                            initial,
                            lr_multiplier: 1.0,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                (params, Gradients::Full(Box::new(model.zero_gradients()?)))
            }
            Some(lora) => {
                if !(lora.plus_ratio.is_finite() && lora.plus_ratio > 0.0) {
                    return Err(Error::Invalid(format!(
                        "the LoRA+ ratio must be a positive number, not {}",
                        lora.plus_ratio
                    )));
                }
                let host = match &lora.adapter {
                    Some(dir) => Lora::load_peft(&model.config, dir, Some(lora.spec.dropout))?,
                    None => {
                        let mut rng = SplitMix64::new(derive(options.seed, &[0x1a]));
                        Lora::init(&model.config, &lora.spec, &mut rng)?
                    }
                };
                model.attach_lora(&host)?;
                let params = host
                    .named()
                    .into_iter()
                    .map(|(name, t)| ParamSpec {
                        lr_multiplier: if name.contains(".lora_B.") {
                            lora.plus_ratio
                        } else {
                            1.0
                        },
                        decay: true,
                        name,
                        initial: t.clone(),
                    })
                    .collect();
                (params, Gradients::Lora(model.zero_lora_gradients()?))
            }
        };
        // The gradients and the trained tensors laid out as the optimizer's state: the step's
        // norm and update are then one launch each. Before the state exists, so that the copy
        // of the tensors does not raise the run's peak memory.
        let mut grads = grads;
        optim::lay_out(grads.buffers_mut(), Contents::Zero)?;
        optim::lay_out(trained_params(&mut model, &grads), Contents::Keep)?;
        let optimizer = Optimizer::new(&ops, options.optimizer, params, compute)?;
        let state = TrainerState::new(trajectory(&options, &model));
        Ok(Trainer {
            model,
            base_dir: base_dir.to_path_buf(),
            options,
            optimizer,
            grads,
            plan,
            eval,
            state,
            total_steps,
            last_collect: None,
            dist: None,
            stop_vote: false,
            stop_agreed: false,
        })
    }

    fn params(&self) -> Vec<&Buffer> {
        params_of(&self.model, &self.grads)
    }

    /// Whether each step's gradient norm and AdamW run as one launch each over all trained
    /// tensors ([`optim::lay_out`]); with ZeRO-1 they run tensor by tensor.
    pub fn updates_in_one_launch(&self) -> bool {
        self.optimizer
            .laid_out(&self.params(), &self.grads.buffers())
    }

    /// Makes this trainer rank `dp.rank()` of a data-parallel run of `dp.world_size()` ranks,
    /// each with a trainer made from the same model, options and data. With ZeRO-1 it keeps
    /// the optimizer state of the tensors it owns only. Call it before the first step (before
    /// or after [`Trainer::resume`]: a checkpoint holds the full state, whatever world size
    /// wrote it).
    pub fn set_data_parallel(&mut self, dp: DataParallel) -> Result<()> {
        if self.dist.is_some() {
            return Err(Error::Invalid(
                "the trainer is already part of a data-parallel run".into(),
            ));
        }
        let names: Vec<String> = self.optimizer.names().map(str::to_string).collect();
        let (state, mine) = RankState::new(dp, &names, &self.optimizer.lens())?;
        self.optimizer.keep_only(&mine)?;
        self.dist = Some(state);
        Ok(())
    }

    /// This trainer's rank (0 when it is not part of a data-parallel run).
    pub fn rank(&self) -> usize {
        self.dist.as_ref().map_or(0, |d| d.dp.rank())
    }

    /// The number of ranks training together (1 without data parallelism).
    pub fn world_size(&self) -> usize {
        self.dist.as_ref().map_or(1, |d| d.dp.world_size())
    }

    /// Whether this trainer writes the run's files (metrics, checkpoints, outputs): rank 0.
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// One optimizer step on the next sequences; returns its metrics (without `eval_loss`).
    /// Waits for the step; [`Trainer::submit`] and [`Trainer::collect`] overlap steps.
    pub fn step(&mut self) -> Result<StepMetrics> {
        let pending = self.submit()?;
        self.collect(pending)
    }

    /// Queues the next optimizer step on the device and returns without waiting for it: every
    /// micro-batch's forward and backward, the loss and gradient norm, and the update, which the
    /// device itself skips if the loss or norm is not finite. The host learns the outcome from
    /// [`Trainer::collect`].
    pub fn submit(&mut self) -> Result<PendingStep> {
        let submitted = Instant::now();
        let step = self.state.step + 1;
        let data = kiln_runtime::profile::timed_host(
            || "step: planning".into(),
            || self.plan.step(self.state.cursor),
        );
        let vocab = self.model.config.vocab;
        let examples = &self.plan.examples;
        // The whole step's counts come from the plan every rank shares, so the loss's
        // normaliser (all ranks' predicted tokens) needs no collective.
        let sizes: Vec<(usize, usize)> = data
            .micro_batches
            .iter()
            .map(|members| {
                members.iter().fold((0, 0), |(t, p), &i| {
                    (t + examples.example_len(i), p + predicted(&examples.get(i)))
                })
            })
            .collect();
        let total: usize = sizes.iter().map(|&(_, p)| p).sum();
        let input_tokens: usize = sizes.iter().map(|&(t, _)| t).sum();
        let mine: Vec<usize> = match &self.dist {
            Some(d) => {
                let tokens: Vec<usize> = sizes.iter().map(|&(t, _)| t).collect();
                data_parallel::shard(&tokens, d.dp.world_size(), d.dp.rank())
            }
            None => (0..sizes.len()).collect(),
        };
        let batches = kiln_runtime::profile::timed_host(
            || "step: packing the batches".into(),
            || {
                mine.iter()
                    .map(|&k| {
                        let seqs: Vec<Sequence> = data.micro_batches[k]
                            .iter()
                            .map(|&i| examples.get(i))
                            .collect();
                        Ok((k, Batch::pack(&seqs.iter().collect::<Vec<_>>(), vocab)?))
                    })
                    .collect::<Result<Vec<(usize, Batch)>>>()
            },
        )?;

        let mut grads = self.grads.buffers_mut();
        match Buffer::span_mut(&mut grads) {
            Some(mut all) => all.zero()?,
            None => grads.into_iter().try_for_each(|b| b.zero())?,
        }
        self.optimizer.begin_step()?;
        let pass = if self.options.recompute {
            Pass::TrainRecompute
        } else {
            Pass::Train
        };
        let ops = self.model.ops().clone();
        // With data parallelism the last pass's backward starts each bucket's reduction as soon
        // as it has finished the bucket's gradients.
        let last = batches.iter().rposition(|(_, b)| b.predicted() > 0);
        for (j, (k, batch)) in batches.iter().enumerate() {
            if batch.predicted() == 0 {
                continue; // nothing to learn from; its share of the loss is zero
            }
            if let Some(lora) = &mut self.model.lora {
                lora.seed = derive(self.options.seed, &[0xd0, step as u64, *k as u64]);
            }
            let device_batch = kiln_runtime::profile::timed_host(
                || "step: uploading the batch".into(),
                || batch.upload(&ops),
            )?;
            // The step's loss is the sum over all its predicted tokens over their count.
            let token_grad = 1.0 / total as f32;
            let pass_loss = match (&self.dist, Some(j) == last) {
                (Some(dist), true) => {
                    let mut hook =
                        |point: GradsReady,
                         g: Option<&mut Weights<Buffer>>,
                         l: Option<&mut Lora<Buffer>>| {
                            let mut grads = match (g, l) {
                                (Some(g), _) => g.all_mut(),
                                (None, Some(l)) => l.all_mut(),
                                (None, None) => vec![],
                            };
                            dist.reduce_at(point, &mut grads)
                        };
                    let (g, l) = match &mut self.grads {
                        Gradients::Full(g) => (Some(&mut **g), None),
                        Gradients::Lora(l) => (None, Some(l)),
                    };
                    self.model.train_pass_hooked(
                        &device_batch,
                        pass,
                        token_grad,
                        g,
                        l,
                        &mut hook,
                    )?
                }
                _ => match &mut self.grads {
                    Gradients::Full(g) => {
                        self.model.train_pass(&device_batch, pass, token_grad, g)?
                    }
                    Gradients::Lora(g) => {
                        self.model
                            .train_pass_lora(&device_batch, pass, token_grad, g)?
                    }
                },
            };
            self.optimizer.add_loss(&ops, &pass_loss.totals)?;
        }
        let mut votes = None;
        if let Some(dist) = &self.dist {
            if last.is_none() {
                // No backward here this step: the zero gradients join every bucket's sum.
                dist.reduce_all(&mut self.grads.buffers_mut())?;
            }
            // The stop votes ride along with the loss: no collective of their own.
            let mut vote = ops
                .device()
                .upload(&[f32::from(u8::from(self.stop_vote))])?;
            dist.dp.comm.all_reduce_sum(
                &mut [self.optimizer.loss_mut(), &mut vote],
                "the step's loss and stop votes",
            )?;
            votes = Some(vote);
        }
        kiln_runtime::profile::stretch("step: update", || self.update(&ops, step, total == 0))?;
        let report = self.optimizer.read_step()?;
        let stop_votes = votes.map(|v| v.read_later::<f32>()).transpose()?;
        self.state.step = step;
        self.state.cursor = data.next;
        Ok(PendingStep {
            step,
            report,
            stop_votes,
            tokens: total,
            input_tokens,
            micro_batches: sizes.len(),
            submitted,
        })
    }

    /// Queues the step's update from the (summed) gradients: the norm, the control block and
    /// AdamW (under ZeRO-1 [`RankState::sharded_update`]'s).
    fn update(&mut self, ops: &kiln_ops::Ops, step: usize, skip: bool) -> Result<()> {
        let grads: Vec<&Buffer> = self.grads.buffers();
        let mut params = trained_params(&mut self.model, &self.grads);
        match &self.dist {
            Some(d) if d.sharded().is_some() => {
                d.sharded_update(ops, &mut self.optimizer, &mut params, &grads, step, skip)
            }
            Some(d) => {
                d.dp.comm.join()?; // the summed gradients and loss
                self.optimizer.step(ops, params, &grads, step, skip)
            }
            None => self.optimizer.step(ops, params, &grads, step, skip),
        }
    }

    /// Waits for a step [`Trainer::submit`] queued (steps are collected in order) and returns its
    /// metrics (without `eval_loss`). A step's time runs from the previous collect (or its
    /// submission), so with one step queued ahead it is the device's pace.
    pub fn collect(&mut self, pending: PendingStep) -> Result<StepMetrics> {
        let block = pending.report.wait()?;
        let report = StepReport::from_control(&block);
        if let Some(votes) = pending.stop_votes {
            self.stop_agreed |= votes.wait()?.first().is_some_and(|&v| v > 0.0);
        }
        let now = Instant::now();
        let since = match self.last_collect {
            Some(t) if t > pending.submitted => t,
            _ => pending.submitted,
        };
        self.last_collect = Some(now);
        let seconds = now.duration_since(since).as_secs_f64();
        self.state.elapsed_s += seconds;
        if report.skipped {
            self.state.consecutive_skips += 1;
        } else {
            self.state.consecutive_skips = 0;
        }
        self.optimizer.updates = report.updates;
        self.state.updates = report.updates;
        let loss = if pending.tokens > 0 {
            report.loss_sum / pending.tokens as f64
        } else {
            f64::NAN
        };
        let device = self.model.ops().device().clone();
        let device_peak = device.peak_memory_bytes(false)?.unwrap_or(0);
        Ok(StepMetrics {
            step: pending.step,
            loss,
            grad_norm: report.grad_norm,
            lr: self.optimizer.lr(pending.step),
            tokens: pending.tokens,
            input_tokens: pending.input_tokens,
            tokens_per_s: pending.input_tokens as f64 / seconds.max(1e-9),
            elapsed_s: self.state.elapsed_s,
            peak_memory_bytes: peak_resident_bytes() + device_peak,
            skipped: report.skipped,
            micro_batches: pending.micro_batches,
            eval_loss: None,
        })
    }

    /// Whether the host must see step `step`'s results before queueing the next: it is
    /// evaluated, checkpointed or the last.
    fn needs_idle_after(&self, step: usize) -> bool {
        let every = |n: usize| n > 0 && step % n == 0;
        step >= self.total_steps || every(self.options.eval_every) || every(self.options.save_every)
    }

    /// The mean loss over the evaluation sequences, if there are any.
    pub fn evaluate(&self) -> Result<Option<f64>> {
        let Some(eval) = &self.eval else {
            return Ok(None);
        };
        let (report, _) = evaluate(&self.model, eval, self.options.max_seq_len)?;
        Ok(Some(report.loss))
    }

    /// Runs the remaining steps, writing `out/metrics.jsonl`, checkpoints and, at the end, the
    /// outputs; `on_step` sees every step's metrics. Setting `stop` (from a signal handler)
    /// ends the run after the current step with a checkpoint. In a data-parallel run every
    /// rank calls it; only rank 0 evaluates and writes files (checkpoints and outputs gather
    /// ZeRO-1's sharded state first, which takes every rank).
    pub fn run(
        &mut self,
        out: &Path,
        stop: &AtomicBool,
        mut on_step: impl FnMut(&StepMetrics),
    ) -> Result<RunEnd> {
        let mut log = if self.is_root() {
            std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
            Some(MetricsLog::open(
                &out.join("metrics.jsonl"),
                self.state.step,
            )?)
        } else {
            None
        };
        // One step queued ahead of the one being read, except where the host needs the device
        // idle after a step (evaluation, a checkpoint, the end) and after a skipped step: a
        // run of skips may end in a stop, whose checkpoint must be the last step logged.
        let mut pending: Option<PendingStep> = None;
        loop {
            let hold = pending.as_ref().is_some_and(|p| {
                self.needs_idle_after(p.step()) || self.state.consecutive_skips > 0
            });
            // Alone, a stop request ends the run after the current step. With several ranks it
            // is a vote carried by the next step queued; every rank reads the votes back from
            // the same step and stops after the same one (the checkpoint is collective).
            let stopping = match self.dist {
                None => stop.load(Ordering::SeqCst),
                Some(_) => {
                    self.stop_vote = stop.load(Ordering::SeqCst);
                    self.stop_agreed
                }
            };
            let next = if !hold && self.state.step < self.total_steps && !stopping {
                Some(self.submit()?)
            } else {
                None
            };
            let Some(done) = pending.take() else {
                match next {
                    Some(n) => {
                        pending = Some(n);
                        continue;
                    }
                    None => break,
                }
            };
            let mut m = self.collect(done)?;
            let every = self.options.eval_every;
            if self.is_root() && ((every > 0 && m.step % every == 0) || m.step == self.total_steps)
            {
                m.eval_loss = self.evaluate()?;
            }
            if let Some(log) = &mut log {
                log.write(&m)?;
            }
            on_step(&m);
            if self.state.consecutive_skips >= MAX_CONSECUTIVE_SKIPS {
                // The step before this one was skipped, so nothing was queued behind it.
                debug_assert!(next.is_none());
                let stopped = m;
                let checkpoint = self.save_checkpoint(out)?;
                return Err(Error::Training(format!(
                    "steps {}..={} all had a non-finite loss or gradient norm (last: loss {}, \
                     grad norm {}); no update was applied in them. Stopped; the weights after \
                     step {} are in {} (try a lower --lr or check the data)",
                    stopped.step + 1 - MAX_CONSECUTIVE_SKIPS,
                    stopped.step,
                    stopped.loss,
                    stopped.grad_norm,
                    self.state.step,
                    checkpoint.display()
                )));
            }
            let save_every = self.options.save_every;
            if save_every > 0 && m.step % save_every == 0 {
                self.save_checkpoint(out)?;
            }
            pending = next;
        }
        if self.state.step < self.total_steps {
            // Only a stop request ends the loop early.
            let checkpoint = self.save_checkpoint(out)?;
            return Ok(RunEnd::Interrupted { checkpoint });
        }
        let output = self.save_outputs(out)?;
        Ok(RunEnd::Finished { output })
    }

    /// The full optimizer state on rank 0 (gathered from the owners under ZeRO-1: every rank
    /// must call it then); `None` on the other ranks.
    fn full_state(&mut self) -> Result<Option<FullState>> {
        if let Some((dist, owners)) = self.dist.as_ref().and_then(|d| Some((d, d.sharded()?))) {
            let params = params_of(&self.model, &self.grads);
            return self.optimizer.gather(&*dist.dp.comm, owners, &params);
        }
        if !self.is_root() {
            return Ok(None);
        }
        Ok(Some(FullState {
            masters: self.optimizer.masters(&self.params())?,
            moments: self.optimizer.moments()?,
        }))
    }

    /// Writes `out/checkpoint-STEP/` (see [`checkpoint`]) and prunes old ones; returns its
    /// path. In a data-parallel run every rank calls it and rank 0 writes the full state, so
    /// any number of ranks can resume from it.
    pub fn save_checkpoint(&mut self, out: &Path) -> Result<PathBuf> {
        let Some(FullState { masters, moments }) = self.full_state()? else {
            return Ok(checkpoint::dir_of(out, self.state.step));
        };
        let adapter = |dir: &Path| self.adapter_from(&masters)?.save_peft(dir, None);
        let is_lora = matches!(self.grads, Gradients::Lora(_));
        let data = CheckpointData {
            state: &self.state,
            adapter: is_lora.then_some(&adapter as &dyn Fn(&Path) -> Result<()>),
            model: (!is_lora).then_some(masters.as_slice()),
            moments: &moments,
        };
        checkpoint::save(out, &data, self.options.keep)
    }

    /// The adapters as host tensors from the masters, by PEFT name.
    fn adapter_from(&self, masters: &[(String, HostTensor)]) -> Result<Lora<HostTensor>> {
        let lora = self
            .model
            .lora
            .as_ref()
            .ok_or_else(|| Error::Invalid("no adapters".into()))?;
        Lora::build(&self.model.config, &lora.weights.spec, |name, shape, _| {
            let (_, t) = masters
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| Error::Invalid(format!("no master for `{name}`")))?;
            Ok(HostTensor::new(shape.to_vec(), t.data.clone()))
        })
    }

    /// Continues from the checkpoint in `dir`: weights (or adapters), moments, step and data
    /// cursor. The run's settings must be those the checkpoint was trained with.
    pub fn resume(&mut self, dir: &Path) -> Result<()> {
        let state = checkpoint::load_state(dir)?;
        state.check_resumable(&self.state.trajectory, dir)?;
        let weights_file = match self.grads {
            Gradients::Lora(_) => dir.join("adapter_model.safetensors"),
            Gradients::Full(_) => dir.join(checkpoint::MODEL_FILE),
        };
        let values = checkpoint::tensors(&weights_file)?;
        let params = trained_params(&mut self.model, &self.grads);
        self.optimizer.load_masters(params, &values)?;
        let moments = checkpoint::tensors(&dir.join(checkpoint::OPTIMIZER_FILE))?;
        self.optimizer.load_moments(&moments)?;
        self.optimizer.set_updates(state.updates)?;
        self.state = state;
        Ok(())
    }

    /// Writes the trained result: LoRA → `out/adapter/` (PEFT), full → `out/model/` (a
    /// Hugging Face folder with the base's config and tokenizer). Returns its path. In a
    /// data-parallel run every rank calls it and rank 0 writes.
    pub fn save_outputs(&mut self, out: &Path) -> Result<PathBuf> {
        let is_lora = matches!(self.grads, Gradients::Lora(_));
        let dir = out.join(if is_lora { "adapter" } else { "model" });
        let Some(FullState { masters, .. }) = self.full_state()? else {
            return Ok(dir);
        };
        match self.grads {
            Gradients::Lora(_) => {
                let adapter = self.adapter_from(&masters)?;
                let base = self.base_dir.display().to_string();
                crate::atomic::write_dir(
                    &dir,
                    |_| Ok(true),
                    |tmp| adapter.save_peft(tmp, Some(&base)),
                )?;
                Ok(dir)
            }
            Gradients::Full(_) => {
                let tensors: Vec<(&str, &HostTensor)> =
                    masters.iter().map(|(n, t)| (n.as_str(), t)).collect();
                crate::export::write_model_folder(
                    &self.base_dir,
                    &tensors,
                    crate::weights::SaveDtype::F32,
                    &dir,
                )?;
                Ok(dir)
            }
        }
    }

    /// The f32 values of the trained tensors by name (for checks and exports). Under ZeRO-1
    /// in bf16 every rank must call it (it gathers the masters); the other ranks get `[]`.
    pub fn trained_tensors(&mut self) -> Result<Vec<(String, HostTensor)>> {
        match self.dist.as_ref().and_then(RankState::sharded) {
            Some(_) => Ok(self.full_state()?.map(|s| s.masters).unwrap_or_default()),
            None => self.optimizer.masters(&self.params()),
        }
    }

    /// The gradients of the last step, by name (f32 on the host; for checks).
    pub fn gradients(&self) -> Result<Vec<(String, Vec<f32>)>> {
        let named: Vec<(String, &Buffer)> = match &self.grads {
            Gradients::Full(g) => g.named(),
            Gradients::Lora(g) => g.named(),
        };
        named
            .into_iter()
            .map(|(n, b)| Ok((n, crate::precision::download(b)?)))
            .collect()
    }

    /// Bytes of optimizer state on the device.
    pub fn optimizer_bytes(&self) -> usize {
        self.optimizer.state_bytes()
    }
}

/// The settings a resumed run must share with its checkpoint.
fn trajectory(options: &TrainOptions, model: &Model) -> BTreeMap<String, String> {
    let o = &options.optimizer;
    let mut t = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        t.insert(k.to_string(), v);
    };
    put(
        "mode",
        if options.lora.is_some() {
            "lora"
        } else {
            "full"
        }
        .into(),
    );
    if let Some(l) = &options.lora {
        put("lora-plus-ratio", l.plus_ratio.to_string());
        put("lora-dropout", l.spec.dropout.to_string());
    }
    put("seed", options.seed.to_string());
    put("tokens-per-step", options.tokens_per_step.to_string());
    put("max-seq-len", options.max_seq_len.to_string());
    put("lr", o.lr.to_string());
    put("schedule", o.schedule.kind.to_string());
    put("warmup-steps", o.schedule.warmup.to_string());
    put("total-steps", o.schedule.total.to_string());
    put("precision", model.precision.to_string());
    put(
        "model",
        format!(
            "{} layers {} hidden {} vocab {}",
            model.config.architecture.model_type(),
            model.config.layers,
            model.config.hidden,
            model.config.vocab
        ),
    );
    t
}

//! [`Model`]: a Qwen2/Llama decoder on a device — the parameters, and the whole forward and
//! backward over a packed batch:
//!
//! ```text
//! x0 = embed(ids)   x(l+1) = block_l(x(l))   hidden = rmsnorm(xL) · w_norm
//! loss = cut_cross_entropy(hidden, W_out, targets)     (W_out = lm_head, or embed when tied)
//! ```
//!
//! The model owns the parameters; a [`Forward`] owns the activations of one batch (each block's
//! input, and its [`Saved`] unless the block is to be recomputed); a [`Weights`] of f32 buffers
//! from [`Model::zero_gradients`] owns the gradients, which the backward adds to.

use std::path::Path;
use std::sync::Arc;

use kiln_compiler::DType;
use kiln_ops::cross_entropy::{CrossEntropyState, CutCrossEntropy};
use kiln_ops::embedding::Embedding;
use kiln_ops::rmsnorm::RmsNorm;
use kiln_ops::Ops;
use kiln_runtime::Buffer;

use crate::adapters::Lora;
use crate::batch::{DeviceBatch, IGNORE_INDEX};
use crate::block::{Block, BlockGrads, Saved};
use crate::config::ModelConfig;
use crate::layers::lora::LayerAdapters;
use crate::params::Weights;
use crate::precision::{self, Precision};
use crate::weights::SafeTensors;
use crate::{Error, HostTensor, Result};

/// What a forward keeps for the backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Evaluation or generation: nothing is kept, one block's activations live at a time.
    Inference,
    /// Training: every block's activations are saved for the backward.
    Train,
    /// Training with activation checkpointing: only each block's input is kept, and the
    /// backward recomputes the block's activations (same gradients, less memory).
    TrainRecompute,
}

/// The loss of a [`Model::train_pass`], left on the device (reading it would make the host wait
/// for the pass).
pub struct PassLoss {
    /// f32 `[sum of the per-token losses, predicted tokens, sum of z-losses]`, as the kernels
    /// summed them.
    pub totals: Buffer,
    /// The number of predicted tokens.
    pub predicted: usize,
    /// The per-token losses, f32 `[tokens]` (0 where nothing is predicted), on the device.
    pub losses: Buffer,
}

/// A point of a training pass's backward after which some trained tensors' gradients are
/// final for the pass, in the order the backward reaches them: the output projection (after
/// the loss; `lm_head` when untied), the final norm, each block from the last to the first, and
/// the embedding (which, when tied, also holds the output projection's gradient). Data
/// parallelism starts a bucket's all-reduce there ([`Model::train_pass_hooked`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GradsReady {
    Output,
    Norm,
    Layer(usize),
    Embedding,
}

/// Called at every [`GradsReady`] point of a backward with the gradients the pass adds to.
pub type BackwardHook<'h> = dyn FnMut(GradsReady, Option<&mut Weights<Buffer>>, Option<&mut Lora<Buffer>>) -> Result<()>
    + 'h;

/// The result of [`Model::forward`]: the loss, and the activations the backward needs.
pub struct Forward {
    /// The mean loss over the predicted tokens (0 if none).
    pub loss: f32,
    /// The sum of the per-token losses (`loss × predicted`, as the kernel summed it).
    pub loss_sum: f32,
    /// The number of predicted tokens.
    pub predicted: usize,
    pass: Pass,
    /// The adapters' dropout seed the forward used (the backward redraws the same masks).
    lora_seed: u64,
    trunk: Trunk,
    ce: CrossEntropyState,
}

/// The activations of everything before the loss.
struct Trunk {
    /// The input of every block (empty for [`Pass::Inference`]).
    inputs: Vec<Buffer>,
    /// Every block's saved activations (for [`Pass::Train`]).
    saved: Vec<Saved>,
    /// The last block's output, the final norm's rstd and output.
    last: Buffer,
    final_rstd: Buffer,
    hidden: Buffer,
}

impl Forward {
    /// The per-token losses, f32 `[tokens]` (0 where nothing is predicted), on the device.
    pub fn losses(&self) -> &Buffer {
        &self.ce.losses
    }

    /// The per-token losses on the host.
    pub fn token_losses(&self) -> Result<Vec<f32>> {
        Ok(self.ce.losses.download::<f32>()?)
    }
}

/// A model on a device: its configuration, precision and parameters, and the LoRA adapters
/// it computes with, if any.
pub struct Model {
    pub config: ModelConfig,
    pub precision: Precision,
    ops: Arc<Ops>,
    pub weights: Weights<Buffer>,
    pub lora: Option<ModelLora>,
}

/// LoRA adapters attached to a model, in its compute precision, over its frozen weights.
pub struct ModelLora {
    pub weights: Lora<Buffer>,
    /// The seed of the dropout masks of the next training forward (the trainer draws one per
    /// micro-batch); evaluation and generation never drop out.
    pub seed: u64,
}

impl Model {
    /// Loads a Hugging Face model folder (`config.json`, `model.safetensors` or a sharded
    /// index) onto `ops`' device in `precision`.
    pub fn load(dir: impl AsRef<Path>, ops: Arc<Ops>, precision: Precision) -> Result<Model> {
        let dir = dir.as_ref();
        let config = ModelConfig::load(dir)?;
        // Refused before a byte of the weights is read.
        check_supported(&config, &dir.join("config.json").display().to_string())?;
        let tensors = SafeTensors::open(dir)?;
        tensors.check(&config.parameters())?;
        Model::from_tensors(config, ops, precision, |name| tensors.get(name))
    }

    /// A model of `config` whose tensors come from `tensor(hugging_face_name)`.
    pub fn from_tensors(
        config: ModelConfig,
        ops: Arc<Ops>,
        precision: Precision,
        mut tensor: impl FnMut(&str) -> Result<HostTensor>,
    ) -> Result<Model> {
        check_supported(&config, "the model's config")?;
        let device = ops.device().clone();
        let weights = Weights::build(&config, |name, shape| {
            let t = tensor(name)?;
            if t.shape != shape {
                return Err(Error::format(
                    format!("tensor `{name}`"),
                    format!("shape {:?}, the config implies {shape:?}", t.shape),
                ));
            }
            precision::upload(&device, &t, precision.dtype())
        })?;
        Ok(Model {
            config,
            precision,
            ops,
            weights,
            lora: None,
        })
    }

    /// Attaches LoRA adapters (f32 on the host), uploaded in the model's precision; the base
    /// weights stay as they are.
    pub fn attach_lora(&mut self, lora: &Lora<crate::HostTensor>) -> Result<()> {
        let device = self.ops.device().clone();
        let dtype = self.dtype();
        let mut tensors = lora.named().into_iter();
        let weights = Lora::build(&self.config, &lora.spec, |_, _, _| {
            let (_, t) = tensors
                .next()
                .expect("the same spec builds the same tensors");
            precision::upload(&device, t, dtype)
        })?;
        self.lora = Some(ModelLora { weights, seed: 0 });
        Ok(())
    }

    /// The adapters of layer `l` as a forward of `pass` uses them.
    pub(crate) fn layer_adapters(
        &self,
        l: usize,
        pass: Pass,
        seed: u64,
    ) -> Option<LayerAdapters<'_>> {
        let lora = self.lora.as_ref()?;
        let spec = &lora.weights.spec;
        Some(LayerAdapters {
            weights: &lora.weights.layers[l],
            rank: spec.rank,
            scale: spec.scale() as f32,
            dropout: if pass == Pass::Inference {
                0.0
            } else {
                spec.dropout
            },
            seed: crate::rng::derive(seed, &[l as u64]),
        })
    }

    /// The device and kernels the model runs on.
    pub fn ops(&self) -> &Arc<Ops> {
        &self.ops
    }

    fn dtype(&self) -> DType {
        self.precision.dtype()
    }

    /// Gradients for every parameter: f32, zeroed, in the parameters' structure.
    pub fn zero_gradients(&self) -> Result<Weights<Buffer>> {
        let device = self.ops.device();
        Weights::build(&self.config, |_, shape| {
            Ok(device.alloc(DType::F32, shape.iter().product())?)
        })
    }

    fn final_norm(&self, tokens: usize) -> RmsNorm {
        RmsNorm {
            rows: tokens,
            n: self.config.hidden,
            eps: self.config.rms_norm_eps as f32,
        }
    }

    fn cross_entropy(&self, tokens: usize) -> CutCrossEntropy {
        let workspace = crate::memory::loss_workspace(self.ops.device().is_gpu());
        CutCrossEntropy {
            ignore_index: IGNORE_INDEX,
            ..CutCrossEntropy::with_workspace(
                tokens,
                self.config.hidden,
                self.config.vocab,
                workspace as usize,
            )
        }
    }

    fn embedding(&self) -> Embedding {
        Embedding {
            vocab: self.config.vocab,
            hidden: self.config.hidden,
        }
    }

    /// Embedding, blocks and final norm over `batch`: what the loss (or logits) is computed
    /// from, and what a training pass keeps.
    fn trunk(&self, batch: &DeviceBatch, pass: Pass, seed: u64) -> Result<Trunk> {
        let (ops, t, dtype) = (&*self.ops, batch.tokens, self.dtype());
        let th = t * self.config.hidden;
        let device = ops.device();
        let block = Block::new(ops, &self.config, dtype, t);

        let mut x = device.alloc_uninit(dtype, th)?;
        self.embedding()
            .forward(ops, &batch.input_ids, &self.weights.embed, &mut x)?;
        let mut inputs = vec![];
        let mut saved = vec![];
        for (l, w) in self.weights.layers.iter().enumerate() {
            let mut out = device.alloc_uninit(dtype, th)?;
            let lora = self.layer_adapters(l, pass, seed);
            let s = block.forward(w, lora.as_ref(), batch, &x, &mut out)?;
            let input = std::mem::replace(&mut x, out);
            match pass {
                Pass::Inference => {}
                Pass::Train => {
                    inputs.push(input);
                    saved.push(s);
                }
                Pass::TrainRecompute => inputs.push(input),
            }
        }
        let mut hidden = device.alloc_uninit(dtype, th)?;
        let mut final_rstd = device.alloc_uninit(DType::F32, t)?;
        self.final_norm(t)
            .forward(ops, &x, &self.weights.norm, &mut hidden, &mut final_rstd)?;
        Ok(Trunk {
            inputs,
            saved,
            last: x,
            final_rstd,
            hidden,
        })
    }

    /// The forward over `batch`: the loss and per-token losses, and for a training pass what
    /// the backward needs.
    pub fn forward(&self, batch: &DeviceBatch, pass: Pass) -> Result<Forward> {
        let lora_seed = self.lora.as_ref().map_or(0, |l| l.seed);
        let trunk = self.trunk(batch, pass, lora_seed)?;
        let ce = self.cross_entropy(batch.tokens).forward(
            &self.ops,
            &trunk.hidden,
            self.weights.output(),
            &batch.targets,
        )?;
        let totals: Vec<f32> = ce.totals.download()?;
        let predicted = totals[1] as usize;
        Ok(Forward {
            loss: if predicted > 0 {
                totals[0] / totals[1]
            } else {
                0.0
            },
            loss_sum: totals[0],
            predicted,
            pass,
            lora_seed,
            trunk,
            ce,
        })
    }

    /// The full logits (f32, `vocab` each) of the given token rows of `batch`, from the same
    /// forward as the loss. For checks and generation without a cache; the loss never forms
    /// them.
    pub fn logits(&self, batch: &DeviceBatch, rows: &[usize]) -> Result<Vec<Vec<f32>>> {
        let trunk = self.trunk(batch, Pass::Inference, 0)?;
        let h = self.config.hidden;
        rows.iter()
            .map(|&row| {
                let hidden = trunk.hidden.slice(row * h..(row + 1) * h)?;
                self.project_to_vocab(hidden)
            })
            .collect()
    }

    /// `hidden[H] · W_outᵀ` as f32 logits on the host.
    pub(crate) fn project_to_vocab(
        &self,
        hidden: kiln_runtime::BufferView<'_>,
    ) -> Result<Vec<f32>> {
        let vocab = self.config.vocab;
        let mut logits = self.ops.device().alloc(DType::F32, vocab)?;
        let gemm = kiln_runtime::Gemm::new(1, vocab, self.config.hidden).transpose_b();
        self.ops
            .device()
            .gemm(&gemm, hidden, self.weights.output(), &mut logits, None)?;
        Ok(logits.download()?)
    }

    /// The backward of `forward` (a training pass over `batch`): adds the gradient of
    /// `dloss ×` the mean loss with respect to every weight to `grads` (full fine-tuning; the
    /// adapters, if any, get none).
    pub fn backward(
        &self,
        batch: &DeviceBatch,
        forward: Forward,
        dloss: f32,
        grads: &mut Weights<Buffer>,
    ) -> Result<()> {
        self.backward_into(batch, forward, dloss, Some(grads), None)
    }

    /// The backward of `forward` for LoRA training: adds the gradient of `dloss ×` the mean
    /// loss with respect to the attached adapters to `grads` (f32, in the adapters' structure);
    /// the base weights are frozen and get none, so their gradient GEMMs never run.
    pub fn backward_lora(
        &self,
        batch: &DeviceBatch,
        forward: Forward,
        dloss: f32,
        grads: &mut Lora<Buffer>,
    ) -> Result<()> {
        if self.lora.is_none() {
            return Err(Error::Invalid(
                "backward_lora of a model without adapters (attach_lora first)".into(),
            ));
        }
        self.backward_into(batch, forward, dloss, None, Some(grads))
    }

    /// Gradients for the attached adapters: f32, zeroed, in their structure.
    pub fn zero_lora_gradients(&self) -> Result<Lora<Buffer>> {
        let lora = self
            .lora
            .as_ref()
            .ok_or_else(|| Error::Invalid("the model has no adapters".into()))?;
        let device = self.ops.device();
        Lora::build(&self.config, &lora.weights.spec, |_, [r, c], _| {
            Ok(device.alloc(DType::F32, r * c)?)
        })
    }

    fn backward_into(
        &self,
        batch: &DeviceBatch,
        forward: Forward,
        dloss: f32,
        mut grads: Option<&mut Weights<Buffer>>,
        lora_grads: Option<&mut Lora<Buffer>>,
    ) -> Result<()> {
        if forward.pass == Pass::Inference {
            return Err(Error::Invalid(
                "backward of an inference forward: run the forward with Pass::Train".into(),
            ));
        }
        let (ops, t, dtype) = (&*self.ops, batch.tokens, self.dtype());
        let Forward {
            trunk,
            ce,
            pass,
            lora_seed,
            ..
        } = forward;
        let mut d_hidden = ops.device().alloc(dtype, t * self.config.hidden)?;
        let output_grad = grads.as_deref_mut().map(|g| self.output_gradient(g));
        self.cross_entropy(t).backward(
            ops,
            &trunk.hidden,
            self.weights.output(),
            &batch.targets,
            &ce,
            dloss,
            &mut d_hidden,
            output_grad,
            true,
        )?;
        self.backward_trunk(
            batch, trunk, pass, lora_seed, d_hidden, grads, lora_grads, None,
        )
    }

    /// The gradient buffer of the output projection: the lm_head's, or the embedding's when
    /// they are tied (it then holds both uses).
    fn output_gradient<'g>(&self, g: &'g mut Weights<Buffer>) -> kiln_runtime::BufferViewMut<'g> {
        match &mut g.lm_head {
            Some(head) => head.view_mut(),
            None => g.embed.view_mut(),
        }
    }

    /// The forward and backward of a training step's micro-batch in one pass, the loss's
    /// logits computed once ([`CutCrossEntropy::forward_backward`]): adds the gradient of
    /// `token_grad ×` the sum of the batch's per-token losses to `grads` (full fine-tuning).
    /// For the mean over one batch `token_grad` is `1 / predicted`; over a step of several,
    /// `1 / the step's predicted tokens`.
    pub fn train_pass(
        &self,
        batch: &DeviceBatch,
        pass: Pass,
        token_grad: f32,
        grads: &mut Weights<Buffer>,
    ) -> Result<PassLoss> {
        self.train_pass_into(batch, pass, token_grad, Some(grads), None, None)
    }

    /// [`Model::train_pass`] (full fine-tuning: `grads`) or [`Model::train_pass_lora`]
    /// (`lora_grads`) that calls `hook` at every [`GradsReady`] point of the backward, in
    /// order, with the gradients, once the work that makes them final is queued.
    pub fn train_pass_hooked(
        &self,
        batch: &DeviceBatch,
        pass: Pass,
        token_grad: f32,
        grads: Option<&mut Weights<Buffer>>,
        lora_grads: Option<&mut Lora<Buffer>>,
        hook: &mut BackwardHook<'_>,
    ) -> Result<PassLoss> {
        if lora_grads.is_some() == grads.is_some() || (lora_grads.is_some() && self.lora.is_none())
        {
            return Err(Error::Invalid(
                "a training pass trains either the weights or the attached adapters".into(),
            ));
        }
        self.train_pass_into(batch, pass, token_grad, grads, lora_grads, Some(hook))
    }

    /// [`Model::train_pass`] for LoRA training: the gradients go to the attached adapters.
    pub fn train_pass_lora(
        &self,
        batch: &DeviceBatch,
        pass: Pass,
        token_grad: f32,
        grads: &mut Lora<Buffer>,
    ) -> Result<PassLoss> {
        if self.lora.is_none() {
            return Err(Error::Invalid(
                "train_pass_lora of a model without adapters (attach_lora first)".into(),
            ));
        }
        self.train_pass_into(batch, pass, token_grad, None, Some(grads), None)
    }

    fn train_pass_into(
        &self,
        batch: &DeviceBatch,
        pass: Pass,
        token_grad: f32,
        mut grads: Option<&mut Weights<Buffer>>,
        mut lora_grads: Option<&mut Lora<Buffer>>,
        mut hook: Option<&mut BackwardHook<'_>>,
    ) -> Result<PassLoss> {
        if pass == Pass::Inference {
            return Err(Error::Invalid(
                "a training pass needs Pass::Train or Pass::TrainRecompute".into(),
            ));
        }
        let (ops, t, dtype) = (&*self.ops, batch.tokens, self.dtype());
        let lora_seed = self.lora.as_ref().map_or(0, |l| l.seed);
        let trunk =
            kiln_runtime::profile::stretch("step: forward", || self.trunk(batch, pass, lora_seed))?;
        let mut d_hidden = ops.device().alloc(dtype, t * self.config.hidden)?;
        let output_grad = grads.as_deref_mut().map(|g| self.output_gradient(g));
        let ce = kiln_runtime::profile::stretch("step: loss", || {
            self.cross_entropy(t).forward_backward(
                ops,
                &trunk.hidden,
                self.weights.output(),
                &batch.targets,
                token_grad,
                &mut d_hidden,
                output_grad,
                true,
            )
        })?;
        if let Some(hook) = hook.as_deref_mut() {
            hook(
                GradsReady::Output,
                grads.as_deref_mut(),
                lora_grads.as_deref_mut(),
            )?;
        }
        kiln_runtime::profile::stretch("step: backward", || {
            self.backward_trunk(
                batch, trunk, pass, lora_seed, d_hidden, grads, lora_grads, hook,
            )
        })?;
        Ok(PassLoss {
            totals: ce.totals,
            predicted: batch.predicted,
            losses: ce.losses,
        })
    }

    /// Everything of the backward after the loss: from `d_hidden` (the gradient at the final
    /// norm's output) through the final norm, the blocks in reverse and the embedding.
    #[allow(clippy::too_many_arguments)]
    fn backward_trunk(
        &self,
        batch: &DeviceBatch,
        trunk: Trunk,
        pass: Pass,
        lora_seed: u64,
        d_hidden: Buffer,
        mut grads: Option<&mut Weights<Buffer>>,
        mut lora_grads: Option<&mut Lora<Buffer>>,
        mut hook: Option<&mut BackwardHook<'_>>,
    ) -> Result<()> {
        let mut ready =
            |point: GradsReady, g: Option<&mut Weights<Buffer>>, l: Option<&mut Lora<Buffer>>| {
                match hook.as_deref_mut() {
                    Some(h) => h(point, g, l),
                    None => Ok(()),
                }
            };
        let (ops, t, dtype) = (&*self.ops, batch.tokens, self.dtype());
        let th = t * self.config.hidden;
        let device = ops.device();
        let Trunk {
            inputs,
            mut saved,
            last,
            final_rstd,
            hidden,
        } = trunk;
        let mut d_x = device.alloc_uninit(dtype, th)?;
        let mut frozen_norm = device.alloc(DType::F32, self.config.hidden)?;
        self.final_norm(t).backward(
            ops,
            &last,
            &self.weights.norm,
            &d_hidden,
            &final_rstd,
            &mut d_x,
            match grads.as_deref_mut() {
                Some(g) => &mut g.norm,
                None => &mut frozen_norm,
            },
        )?;
        drop((d_hidden, hidden, last));
        ready(
            GradsReady::Norm,
            grads.as_deref_mut(),
            lora_grads.as_deref_mut(),
        )?;

        let block = Block::new(ops, &self.config, dtype, t);
        let mut ones = device.alloc_uninit(dtype, t)?;
        match dtype {
            DType::F32 => ones.fill(1.0f32)?,
            _ => ones.fill(half::bf16::ONE)?,
        }
        let mut d_prev = device.alloc_uninit(dtype, th)?;
        for (l, x) in inputs.iter().enumerate().rev() {
            let lora = self.layer_adapters(l, pass, lora_seed);
            let s = match saved.pop() {
                Some(s) => s,
                None => {
                    let mut scratch = device.alloc_uninit(dtype, th)?;
                    let w = &self.weights.layers[l];
                    block.forward(w, lora.as_ref(), batch, x, &mut scratch)?
                }
            };
            let layer_grads = BlockGrads {
                base: grads.as_deref_mut().map(|g| &mut g.layers[l]),
                lora: lora_grads.as_deref_mut().map(|g| &mut g.layers[l]),
            };
            let section = kiln_runtime::profile::section("step: backward, in Block::backward");
            block.backward(
                &self.weights.layers[l],
                lora.as_ref(),
                layer_grads,
                batch,
                x,
                &s,
                &d_x,
                &mut d_prev,
                &ones,
            )?;
            drop(section);
            let freeing = kiln_runtime::profile::section("step: backward, freeing a layer's saved");
            drop(s);
            drop(freeing);
            std::mem::swap(&mut d_x, &mut d_prev);
            ready(
                GradsReady::Layer(l),
                grads.as_deref_mut(),
                lora_grads.as_deref_mut(),
            )?;
        }
        if let Some(g) = grads.as_deref_mut() {
            self.embedding()
                .backward(ops, &batch.input_ids, &d_x, &mut g.embed)?;
        }
        ready(GradsReady::Embedding, grads, lora_grads)
    }
}

/// Refuses what the kernels do not implement, with the reason, before anything is uploaded.
fn check_supported(config: &ModelConfig, location: &str) -> Result<()> {
    let d = config.head_dim;
    if !d.is_power_of_two() || !(16..=256).contains(&d) {
        return Err(Error::unsupported(
            location,
            format!("head_dim {d}: Kiln's attention needs a power of two from 16 to 256"),
        ));
    }
    if let Some(scaling) = &config.rope_scaling {
        return Err(Error::unsupported(
            location,
            format!("rope_scaling {scaling:?}: Kiln's RoPE has no frequency scaling yet"),
        ));
    }
    Ok(())
}

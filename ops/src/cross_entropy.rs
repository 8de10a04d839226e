//! Cut cross-entropy: the mean loss of `logits = hidden[T, H] · W[V, H]ᵀ` against labels, and its
//! gradients, without ever holding the `[T, V]` logits.
//!
//! The vocabulary is walked in chunks of `chunk` rows of `W`. Forward, per chunk: a GEMM writes
//! the chunk's logits (bf16, f32 accumulation) into one reused workspace, and `ce_chunk_fwd`
//! folds them into each token's running max and sum of exponentials and picks out the target
//! logit; `ce_finish` turns those into the log-sum-exp and the loss totals. Backward, per chunk:
//! the GEMM recomputes the logits, `ce_chunk_bwd` turns them in place into
//! `dlogits = (softmax - onehot) · dloss / count`, and two GEMMs add `dlogits · W_chunk` to
//! `dhidden` and write `dlogitsᵀ · hidden` into the chunk's rows of `dW`.
//!
//! Training wants the loss and its gradients together, so [`CutCrossEntropy::forward_backward`]
//! walks the tokens instead, in blocks small enough that a block's logits over the whole
//! vocabulary fit the same workspace: per block one GEMM writes the logits, the kernels fold
//! them into the loss and turn them into `dlogits` in place, and the two gradient GEMMs
//! follow, so no logit is computed twice (the recomputing backward costs a third more GEMM
//! work in the output layer).
//!
//! `hidden` and `W` are bf16 or f32 (one type for both, the GEMMs' operand type); the logits
//! workspace and `dlogits` are of that type too.
//!
//! Labels are used as given (the caller shifts them once); `ignore_index` rows count for
//! nothing; the optional z-loss adds `z_loss · lse²` per counted token.

use std::ops::Range;

use kiln_compiler::DType;
use kiln_runtime::{Args, Buffer, BufferView, BufferViewMut, Gemm};

use crate::context::{activation_type, expect, KernelConfig, Ops};
use crate::{Error, Result};

const FILE: &str = "cross_entropy.kiln";

/// The problem: `tokens` rows of `hidden` features against a vocabulary of `vocab` entries.
#[derive(Clone, Copy, Debug)]
pub struct CutCrossEntropy {
    pub tokens: usize,
    pub hidden: usize,
    pub vocab: usize,
    /// Vocabulary entries per chunk; the logits workspace is `tokens x chunk` of the activations'
    /// type.
    pub chunk: usize,
    /// Label value of tokens that take no part in the loss (Hugging Face's -100).
    pub ignore_index: i32,
    /// Weight of the z-loss term `lse²` (0 turns it off).
    pub z_loss: f32,
}

/// What the forward leaves for the backward, on the device.
pub struct CrossEntropyState {
    /// Log-sum-exp of every token's logits, f32 `[tokens]`.
    pub lse: Buffer,
    /// Every token's loss (z-loss included; 0 where the label is `ignore_index`), f32
    /// `[tokens]`.
    pub losses: Buffer,
    /// `[sum of losses, counted tokens, sum of z-losses]`, f32.
    pub totals: Buffer,
}

impl CrossEntropyState {
    /// The mean loss over counted tokens (0 if none), z-loss included. Reads the device, so it
    /// waits for the forward to finish.
    pub fn loss(&self) -> Result<f32> {
        let t: Vec<f32> = self.totals.download()?;
        Ok(if t[1] > 0.0 { t[0] / t[1] } else { 0.0 })
    }

    /// The number of tokens the loss counts (reads the device).
    pub fn counted_tokens(&self) -> Result<usize> {
        Ok(self.totals.download::<f32>()?[1] as usize)
    }
}

/// A run of vocabulary entries: `len` rows of `W` from `start`.
#[derive(Clone, Copy)]
struct Chunk {
    start: usize,
    len: usize,
}

/// Each token's running max and sum of exponentials and its target logit, f32 `[T]` each,
/// updated in place chunk after chunk.
struct Running {
    max: Buffer,
    sum: Buffer,
    target: Buffer,
}

impl Running {
    fn new(ops: &Ops, tokens: usize) -> Result<Running> {
        Ok(Running {
            max: ops.scratch(DType::F32, tokens)?,
            sum: ops.scratch(DType::F32, tokens)?,
            target: ops.scratch(DType::F32, tokens)?,
        })
    }
}

impl CrossEntropyState {
    fn new(ops: &Ops, tokens: usize) -> Result<CrossEntropyState> {
        Ok(CrossEntropyState {
            lse: ops.scratch(DType::F32, tokens)?,
            losses: ops.scratch(DType::F32, tokens)?,
            totals: ops.scratch(DType::F32, 3)?,
        })
    }
}

impl CutCrossEntropy {
    /// The problem with a chunk that keeps the logits workspace near 128 MiB, labels of -100
    /// ignored, and no z-loss.
    pub fn new(tokens: usize, hidden: usize, vocab: usize) -> CutCrossEntropy {
        CutCrossEntropy::with_workspace(tokens, hidden, vocab, 128 << 20)
    }

    /// As [`CutCrossEntropy::new`], with a logits workspace of at most about `bytes` (of bf16
    /// logits). A larger one means fewer, larger GEMMs: on a GPU, blocks of a few hundred rows
    /// against the whole vocabulary run well below the GEMM's peak.
    pub fn with_workspace(
        tokens: usize,
        hidden: usize,
        vocab: usize,
        bytes: usize,
    ) -> CutCrossEntropy {
        let budget = (bytes / 2).max(1024); // bf16 elements
        let chunk = (budget / tokens.max(1)).next_power_of_two() / 2;
        CutCrossEntropy {
            tokens,
            hidden,
            vocab,
            chunk: chunk.clamp(1024, 1 << 18).min(vocab.max(1)),
            ignore_index: -100,
            z_loss: 0.0,
        }
    }

    /// Device memory the operation allocates beyond its inputs and outputs, in bytes: the
    /// logits workspace (counted for bf16 activations; twice that for f32), the per-token state,
    /// and (for a bf16 `dhidden`) an f32 accumulator.
    pub fn workspace_bytes(&self, dhidden_bf16: bool) -> usize {
        let logits = self.tokens * self.chunk.min(self.vocab) * 2;
        let per_token = 4 * self.tokens * 4 + 3 * 4;
        let accumulator = if dhidden_bf16 {
            self.tokens * self.hidden * 4
        } else {
            0
        };
        logits + per_token + accumulator
    }

    fn check(
        &self,
        op: &'static str,
        hidden: &BufferView<'_>,
        weight: &BufferView<'_>,
        labels: &BufferView<'_>,
    ) -> Result<DType> {
        let (t, h, v) = (self.tokens, self.hidden, self.vocab);
        if t == 0 || h == 0 || v == 0 || self.chunk == 0 {
            return Err(Error::shape(
                op,
                "tokens, hidden, vocab and chunk must be non-zero",
            ));
        }
        if v > i32::MAX as usize || t.saturating_mul(self.chunk) > i32::MAX as usize {
            return Err(Error::shape(
                op,
                format!("tokens x chunk = {t} x {} must stay below 2^31", self.chunk),
            ));
        }
        let dtype = activation_type(op, "hidden", hidden)?;
        if dtype == DType::F16 {
            return Err(Error::shape(
                op,
                "`hidden` is f16: the logit GEMMs take bf16 or f32",
            ));
        }
        expect(op, "hidden", hidden, dtype, t * h)?;
        expect(op, "weight", weight, dtype, v * h)?;
        expect(op, "labels", labels, DType::I32, t)?;
        Ok(dtype)
    }

    /// `dhidden` is f32 or bf16 `[T, H]`; the weight-gradient GEMM writes f32, or bf16 from
    /// bf16 operands, so `dweight` `[V, H]` is of that type.
    fn check_gradients(
        &self,
        op: &'static str,
        dtype: DType,
        dhidden: &BufferViewMut<'_>,
        dweight: Option<&BufferViewMut<'_>>,
    ) -> Result<()> {
        let h = self.hidden;
        let want = if dhidden.dtype() == DType::Bf16 {
            DType::Bf16
        } else {
            DType::F32
        };
        expect(op, "dhidden", dhidden, want, self.tokens * h)?;
        if let Some(dweight) = dweight {
            let dweight_type = match (dtype, dweight.dtype()) {
                (DType::Bf16, DType::Bf16) => DType::Bf16,
                _ => DType::F32,
            };
            expect(op, "dweight", dweight, dweight_type, self.vocab * h)?;
        }
        Ok(())
    }

    /// The chunks: (first vocabulary row, rows).
    fn chunks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.vocab)
            .step_by(self.chunk)
            .map(|start| (start, self.chunk.min(self.vocab - start)))
    }

    /// `logits[:, start .. start + rows] = hidden · W[start .. start + rows]ᵀ` into the first
    /// `tokens x rows` elements of `workspace`.
    fn chunk_logits(
        &self,
        ops: &Ops,
        hidden: BufferView<'_>,
        weight: BufferView<'_>,
        workspace: &mut Buffer,
        (start, rows): (usize, usize),
    ) -> Result<()> {
        let h = self.hidden;
        let w_chunk = weight.slice(start * h..(start + rows) * h)?;
        let logits = workspace.slice_mut(..self.tokens * rows)?;
        let gemm = Gemm::new(self.tokens, rows, h).transpose_b();
        Ok(ops.device().gemm(&gemm, hidden, w_chunk, logits, None)?)
    }

    fn row_config(&self, kernel: &'static str, dtype: DType) -> KernelConfig {
        let block = self.chunk.next_power_of_two().clamp(256, 4096);
        KernelConfig::new(FILE, kernel)
            .elem(dtype)
            .int("BLOCK", block)
            .warps(8)
    }

    /// The loss, as [`CrossEntropyState`] totals on the device (read them with
    /// [`CrossEntropyState::loss`]), from `hidden` `[T, H]` and `weight` `[V, H]` (both bf16 or
    /// both f32) and `labels` i32 `[T]`.
    pub fn forward<'a>(
        &self,
        ops: &Ops,
        hidden: impl Into<BufferView<'a>>,
        weight: impl Into<BufferView<'a>>,
        labels: impl Into<BufferView<'a>>,
    ) -> Result<CrossEntropyState> {
        const OP: &str = "cut cross-entropy forward";
        let (hidden, weight, labels) = (hidden.into(), weight.into(), labels.into());
        let dtype = self.check(OP, &hidden, &weight, &labels)?;
        let t = self.tokens;
        let mut workspace = ops.scratch_uninit(dtype, t * self.chunk.min(self.vocab))?;
        let mut running = Running::new(ops, t)?;
        let mut state = CrossEntropyState::new(ops, t)?;
        for (i, (start, rows)) in self.chunks().enumerate() {
            self.chunk_logits(ops, hidden, weight, &mut workspace, (start, rows))?;
            let logits = workspace.slice(..t * rows)?;
            let chunk = Chunk { start, len: rows };
            self.fold(
                ops,
                dtype,
                i == 0,
                logits,
                labels,
                &mut running,
                0..t,
                chunk,
            )?;
        }
        self.finish(ops, &running, labels, &mut state, 0..t)?;
        Ok(state)
    }

    /// `ce_chunk_fwd`: folds `logits` `[tokens, chunk.len]` (vocabulary entries from
    /// `chunk.start`) of the tokens `tokens` into their running state (`first`: the state
    /// starts here).
    #[allow(clippy::too_many_arguments)]
    fn fold(
        &self,
        ops: &Ops,
        dtype: DType,
        first: bool,
        logits: BufferView<'_>,
        labels: BufferView<'_>,
        running: &mut Running,
        tokens: Range<usize>,
        chunk: Chunk,
    ) -> Result<()> {
        let config = self.row_config("ce_chunk_fwd", dtype).flag("FIRST", first);
        let rows = tokens.len();
        let args = Args::new()
            .input("logits", logits)
            .input("labels", labels.slice(tokens.clone())?)
            .in_out("m_run", running.max.slice_mut(tokens.clone())?)
            .in_out("l_run", running.sum.slice_mut(tokens.clone())?)
            .in_out("target", running.target.slice_mut(tokens)?)
            .i32("chunk", chunk.len as i32)
            .i32("start", chunk.start as i32);
        ops.launch(&config, [rows, 1, 1], &args)?;
        Ok(())
    }

    /// `ce_finish`: the log-sum-exp and loss of the tokens `tokens` from their running state;
    /// the totals are added to with atomics (from zero).
    fn finish(
        &self,
        ops: &Ops,
        running: &Running,
        labels: BufferView<'_>,
        state: &mut CrossEntropyState,
        tokens: Range<usize>,
    ) -> Result<()> {
        let finish = KernelConfig::new(FILE, "ce_finish")
            .int("BLOCK", 1024)
            .warps(4);
        let rows = tokens.len();
        let args = Args::new()
            .input("m_run", running.max.slice(tokens.clone())?)
            .input("l_run", running.sum.slice(tokens.clone())?)
            .input("target", running.target.slice(tokens.clone())?)
            .input("labels", labels.slice(tokens.clone())?)
            .output("lse", state.lse.slice_mut(tokens.clone())?)
            .output("losses", state.losses.slice_mut(tokens)?)
            .in_out("totals", &mut state.totals)
            .i32("rows", rows as i32)
            .i32("ignore_index", self.ignore_index)
            .f32("z_loss", self.z_loss);
        ops.launch(&finish, [finish.programs("BLOCK", rows), 1, 1], &args)?;
        Ok(())
    }

    /// `ce_chunk_bwd`: turns `logits` `[rows, chunk.len]` in place into
    /// `dlogits = (softmax - onehot) · grad` for the rows' `labels` and `lse`.
    #[allow(clippy::too_many_arguments)]
    fn dlogits(
        &self,
        ops: &Ops,
        dtype: DType,
        logits: BufferViewMut<'_>,
        labels: BufferView<'_>,
        lse: BufferView<'_>,
        grad: &Buffer,
        chunk: Chunk,
    ) -> Result<()> {
        let rows = labels.len();
        let args = Args::new()
            .in_out("logits", logits)
            .input("labels", labels)
            .input("lse", lse)
            .input("grad", grad)
            .i32("chunk", chunk.len as i32)
            .i32("start", chunk.start as i32)
            .i32("ignore_index", self.ignore_index)
            .f32("z_loss", self.z_loss);
        ops.launch(&self.row_config("ce_chunk_bwd", dtype), [rows, 1, 1], &args)?;
        Ok(())
    }

    /// The gradients of `dloss x` the mean loss: `dhidden` `[T, H]` (f32, or bf16 through an
    /// f32 accumulator) is overwritten; `dweight` `[V, H]` (f32, or bf16 for bf16 operands) is
    /// overwritten, or added to in place when `accumulate_dweight` (tied embeddings, gradient
    /// accumulation), and not computed at all when `None` (a frozen output projection, as in
    /// LoRA fine-tuning).
    #[allow(clippy::too_many_arguments)]
    pub fn backward<'a>(
        &self,
        ops: &Ops,
        hidden: impl Into<BufferView<'a>>,
        weight: impl Into<BufferView<'a>>,
        labels: impl Into<BufferView<'a>>,
        state: &CrossEntropyState,
        dloss: f32,
        dhidden: impl Into<BufferViewMut<'a>>,
        mut dweight: Option<BufferViewMut<'a>>,
        accumulate_dweight: bool,
    ) -> Result<()> {
        const OP: &str = "cut cross-entropy backward";
        let (hidden, weight, labels) = (hidden.into(), weight.into(), labels.into());
        let mut dhidden = dhidden.into();
        let dtype = self.check(OP, &hidden, &weight, &labels)?;
        let (t, h) = (self.tokens, self.hidden);
        let dhidden_bf16 = dhidden.dtype() == DType::Bf16;
        self.check_gradients(OP, dtype, &dhidden, dweight.as_ref())?;
        expect(OP, "lse", &state.lse, DType::F32, t)?;

        let mut grad = ops.scratch(DType::F32, 1)?;
        let args = Args::new()
            .input("totals", &state.totals)
            .output("grad", &mut grad)
            .f32("dloss", dloss);
        ops.launch(&KernelConfig::new(FILE, "ce_token_grad"), [1, 1, 1], &args)?;
        let mut workspace = ops.scratch_uninit(dtype, t * self.chunk.min(self.vocab))?;
        let mut accumulator = if dhidden_bf16 {
            Some(ops.scratch(DType::F32, t * h)?)
        } else {
            None
        };
        for (i, (start, rows)) in self.chunks().enumerate() {
            self.chunk_logits(ops, hidden, weight, &mut workspace, (start, rows))?;
            // The logits become dlogits in place.
            let chunk = Chunk { start, len: rows };
            let logits = workspace.slice_mut(..t * rows)?;
            self.dlogits(ops, dtype, logits, labels, state.lse.view(), &grad, chunk)?;
            let dlogits = workspace.slice(..t * rows)?;
            let w_chunk = weight.slice(start * h..(start + rows) * h)?;
            // dhidden (+)= dlogits[T, rows] · W_chunk[rows, H]
            let beta = if i == 0 { 0.0 } else { 1.0 };
            let gemm = Gemm::new(t, h, rows).with_beta(beta);
            let dh = match &mut accumulator {
                Some(acc) => acc.view_mut(),
                None => dhidden.reborrow(),
            };
            ops.device().gemm(&gemm, dlogits, w_chunk, dh, None)?;
            // dW_chunk[rows, H] (+)= dlogitsᵀ[rows, T] · hidden[T, H]
            if let Some(dweight) = &mut dweight {
                let beta = if accumulate_dweight { 1.0 } else { 0.0 };
                let gemm = Gemm::new(rows, h, t).transpose_a().with_beta(beta);
                let dw_chunk = dweight.slice_mut(start * h..(start + rows) * h)?;
                ops.device().gemm(&gemm, dlogits, hidden, dw_chunk, None)?;
            }
        }
        if let Some(acc) = &accumulator {
            let config = KernelConfig::new("add.kiln", "to_bf16")
                .int("BLOCK", 2048)
                .warps(8);
            let args = Args::new()
                .input("x", acc)
                .output("out", dhidden)
                .i64("n", (t * h) as i64);
            ops.launch(&config, [config.programs("BLOCK", t * h), 1, 1], &args)?;
        }
        Ok(())
    }
    /// Token rows per block of [`CutCrossEntropy::forward_backward`]: as many as keep a block's
    /// logits over the whole vocabulary within the workspace of `tokens x chunk`, spread evenly.
    pub fn token_block(&self) -> usize {
        let budget = self.tokens * self.chunk.min(self.vocab);
        let most = (budget / self.vocab.max(1)).clamp(1, self.tokens.max(1));
        let blocks = self.tokens.div_ceil(most);
        self.tokens.div_ceil(blocks.max(1))
    }

    /// The loss and its gradients in one pass (training): returns the forward's
    /// [`CrossEntropyState`] and writes the gradient of `token_grad x` the sum of the counted
    /// tokens' losses (for the mean over this call's tokens, `dloss / count`; over a step of
    /// several micro-batches, `1 / the step's count`). `dhidden` `[T, H]` (f32, or bf16) is
    /// overwritten; `dweight` as in [`CutCrossEntropy::backward`]. Same results as `forward`
    /// then `backward`, with each logit computed once.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward<'a>(
        &self,
        ops: &Ops,
        hidden: impl Into<BufferView<'a>>,
        weight: impl Into<BufferView<'a>>,
        labels: impl Into<BufferView<'a>>,
        token_grad: f32,
        dhidden: impl Into<BufferViewMut<'a>>,
        mut dweight: Option<BufferViewMut<'a>>,
        accumulate_dweight: bool,
    ) -> Result<CrossEntropyState> {
        const OP: &str = "cut cross-entropy forward and backward";
        let (hidden, weight, labels) = (hidden.into(), weight.into(), labels.into());
        let mut dhidden = dhidden.into();
        let dtype = self.check(OP, &hidden, &weight, &labels)?;
        let (t, h, v) = (self.tokens, self.hidden, self.vocab);
        self.check_gradients(OP, dtype, &dhidden, dweight.as_ref())?;
        let block = self.token_block();
        if block.saturating_mul(v) > i32::MAX as usize {
            return Err(Error::shape(
                OP,
                format!("a block of {block} tokens x {v} logits must stay below 2^31"),
            ));
        }
        let mut workspace = ops.scratch_uninit(dtype, block * v)?;
        let mut running = Running::new(ops, t)?;
        let mut state = CrossEntropyState::new(ops, t)?;
        let grad = ops.device().upload(&[token_grad])?;
        // One chunk of the whole vocabulary, per block of rows.
        let whole = CutCrossEntropy { chunk: v, ..*self };
        for r0 in (0..t).step_by(block) {
            let rows = block.min(t - r0);
            let hidden_rows = hidden.slice(r0 * h..(r0 + rows) * h)?;
            let labels_rows = labels.slice(r0..r0 + rows)?;
            let logits = workspace.slice_mut(..rows * v)?;
            let gemm = Gemm::new(rows, v, h).transpose_b();
            ops.device()
                .gemm(&gemm, hidden_rows, weight, logits, None)?;

            let tokens = r0..r0 + rows;
            let vocabulary = Chunk { start: 0, len: v };
            let logits = workspace.slice(..rows * v)?;
            whole.fold(
                ops,
                dtype,
                true,
                logits,
                labels,
                &mut running,
                tokens.clone(),
                vocabulary,
            )?;
            self.finish(ops, &running, labels, &mut state, tokens.clone())?;
            let logits = workspace.slice_mut(..rows * v)?;
            let lse = state.lse.slice(tokens)?;
            whole.dlogits(ops, dtype, logits, labels_rows, lse, &grad, vocabulary)?;
            let dlogits = workspace.slice(..rows * v)?;
            // dhidden[rows] = dlogits[rows, V] · W[V, H]: each row written once, rounded once.
            let gemm = Gemm::new(rows, h, v);
            let dh = dhidden.slice_mut(r0 * h..(r0 + rows) * h)?;
            ops.device().gemm(&gemm, dlogits, weight, dh, None)?;
            // dW[V, H] (+)= dlogitsᵀ[V, rows] · hidden[rows, H]
            if let Some(dweight) = &mut dweight {
                let beta = if accumulate_dweight || r0 > 0 {
                    1.0
                } else {
                    0.0
                };
                let gemm = Gemm::new(v, h, rows).transpose_a().with_beta(beta);
                ops.device()
                    .gemm(&gemm, dlogits, hidden_rows, dweight.reborrow(), None)?;
            }
        }
        Ok(state)
    }
}

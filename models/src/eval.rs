//! Evaluation: the token-weighted mean loss and perplexity of a model over sequences, packed
//! Best-Fit-Decreasing into batches, and every sequence's per-token losses.

use std::time::Instant;

use crate::batch::{Batch, Sequence, IGNORE_INDEX};
use crate::model::{Model, Pass};
use crate::packing::best_fit_decreasing;
use crate::Result;

/// What an evaluation measured.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalReport {
    /// The mean loss over every predicted token of every sequence.
    pub loss: f64,
    /// The number of predicted tokens.
    pub tokens: usize,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// The number of input tokens run through the model (no padding exists to count).
    pub input_tokens: usize,
    /// Packed batches run.
    pub batches: usize,
    /// Wall time of the forwards, seconds.
    pub seconds: f64,
}

impl EvalReport {
    /// Input tokens per second.
    pub fn tokens_per_second(&self) -> f64 {
        self.input_tokens as f64 / self.seconds.max(1e-9)
    }
}

/// Each sequence's losses: `n - 1` for `n` tokens (position `t` predicting token `t + 1`),
/// `None` where the label is ignored.
pub type SequenceLosses = Vec<Option<f32>>;

/// Evaluates `model` over `sequences`, packed into batches of at most `batch_tokens` tokens
/// (a longer sequence gets a batch of its own).
pub fn evaluate(
    model: &Model,
    sequences: &[Sequence],
    batch_tokens: usize,
) -> Result<(EvalReport, Vec<SequenceLosses>)> {
    let lengths: Vec<usize> = sequences.iter().map(|s| s.input_ids.len()).collect();
    let bins = best_fit_decreasing(&lengths, batch_tokens);
    let mut per_sequence: Vec<SequenceLosses> = vec![vec![]; sequences.len()];
    let (mut total, mut tokens) = (0.0f64, 0usize);
    let start = Instant::now();
    for bin in &bins {
        let members: Vec<&Sequence> = bin.iter().map(|&i| &sequences[i]).collect();
        let batch = Batch::pack(&members, model.config.vocab)?;
        let forward = model.forward(&batch.upload(model.ops())?, Pass::Inference)?;
        let losses = forward.token_losses()?;
        for (k, &i) in bin.iter().enumerate() {
            let range = batch.cu_seqlens[k]..batch.cu_seqlens[k + 1];
            let n = range.len();
            per_sequence[i] = range
                .take(n - 1)
                .map(|t| (batch.targets[t] != IGNORE_INDEX).then_some(losses[t]))
                .collect();
        }
        for (t, &target) in batch.targets.iter().enumerate() {
            if target != IGNORE_INDEX {
                total += losses[t] as f64;
                tokens += 1;
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let loss = if tokens > 0 {
        total / tokens as f64
    } else {
        0.0
    };
    let report = EvalReport {
        loss,
        tokens,
        perplexity: loss.exp(),
        input_tokens: lengths.iter().sum(),
        batches: bins.len(),
        seconds,
    };
    Ok((report, per_sequence))
}

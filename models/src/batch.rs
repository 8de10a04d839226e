//! [`Batch`]: sequences packed end to end into one row of tokens, with everything the model
//! needs to keep them apart (`cu_seqlens`, per-sequence positions) and the labels shifted, here
//! and nowhere else.

use kiln_ops::attention::PackedBlocks;
use kiln_ops::Ops;
use kiln_runtime::Buffer;

use crate::{Error, Result};

/// Hugging Face's label for a token that takes no part in the loss.
pub const IGNORE_INDEX: i32 = -100;

/// One sequence as the data gives it: token ids and, optionally, labels aligned with them
/// (Hugging Face's convention: `labels[t]` is what position `t` holds, `-100` where it must not
/// be predicted; the shift to "position `t` predicts `t + 1`" happens in [`Batch::pack`]).
/// Without labels every next token is predicted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequence {
    pub input_ids: Vec<u32>,
    pub labels: Option<Vec<i32>>,
}

impl Sequence {
    /// A sequence that predicts every next token.
    pub fn new(input_ids: Vec<u32>) -> Sequence {
        Sequence {
            input_ids,
            labels: None,
        }
    }
}

/// Sequences packed into one row of `tokens` tokens, on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Token ids, sequence after sequence.
    pub input_ids: Vec<i32>,
    /// Each token's position within its own sequence (every sequence starts at 0).
    pub positions: Vec<i32>,
    /// The shifted targets: `targets[t]` is the token position `t` must predict (the next
    /// token of its sequence, or its label), `-100` at each sequence's last token and where
    /// the label is ignored. The first label of each sequence is never a target.
    pub targets: Vec<i32>,
    /// Sequence boundaries: `[0, len0, len0 + len1, ..., tokens]`.
    pub cu_seqlens: Vec<usize>,
}

impl Batch {
    /// Packs `sequences` end to end, checking every id against `vocab`.
    pub fn pack(sequences: &[&Sequence], vocab: usize) -> Result<Batch> {
        let mut batch = Batch {
            input_ids: vec![],
            positions: vec![],
            targets: vec![],
            cu_seqlens: vec![0],
        };
        for (s, seq) in sequences.iter().enumerate() {
            let n = seq.input_ids.len();
            if n == 0 {
                return Err(Error::Invalid(format!("sequence {s} is empty")));
            }
            if let Some(labels) = &seq.labels {
                if labels.len() != n {
                    return Err(Error::Invalid(format!(
                        "sequence {s}: {} labels for {n} input ids (they must be aligned)",
                        labels.len()
                    )));
                }
            }
            let outside = seq
                .input_ids
                .iter()
                .enumerate()
                .find(|(_, &id)| id as usize >= vocab);
            if let Some((t, id)) = outside {
                return Err(Error::Invalid(format!(
                    "sequence {s}, token {t}: id {id} is outside the vocabulary of {vocab}"
                )));
            }
            for (t, &id) in seq.input_ids.iter().enumerate() {
                batch.input_ids.push(id as i32);
                batch.positions.push(t as i32);
                let next = t + 1;
                let target = match (&seq.labels, next < n) {
                    (_, false) => IGNORE_INDEX,
                    (None, true) => seq.input_ids[next] as i32,
                    (Some(labels), true) => labels[next],
                };
                if target != IGNORE_INDEX && !(0..vocab as i64).contains(&(target as i64)) {
                    return Err(Error::Invalid(format!(
                        "sequence {s}, label {next}: {target} is neither -100 nor a token id \
                         below {vocab}"
                    )));
                }
                batch.targets.push(target);
            }
            batch.cu_seqlens.push(batch.input_ids.len());
        }
        if batch.input_ids.is_empty() {
            return Err(Error::Invalid("a batch needs at least one token".into()));
        }
        Ok(batch)
    }

    /// The number of tokens.
    pub fn tokens(&self) -> usize {
        self.input_ids.len()
    }

    /// The number of tokens that are predicted (targets that are not ignored).
    pub fn predicted(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
    }

    /// The batch on `ops`' device.
    pub fn upload(&self, ops: &Ops) -> Result<DeviceBatch> {
        let device = ops.device();
        Ok(DeviceBatch {
            tokens: self.tokens(),
            predicted: self.predicted(),
            input_ids: device.upload(&self.input_ids)?,
            positions: device.upload(&self.positions)?,
            targets: device.upload(&self.targets)?,
            blocks: PackedBlocks::new(ops, &self.cu_seqlens)?,
        })
    }
}

/// A [`Batch`] on a device: what the forward and backward read.
pub struct DeviceBatch {
    pub tokens: usize,
    /// Tokens that are predicted.
    pub predicted: usize,
    /// i32 `[tokens]`.
    pub input_ids: Buffer,
    /// i32 `[tokens]`.
    pub positions: Buffer,
    /// i32 `[tokens]`, shifted, `-100` where nothing is predicted.
    pub targets: Buffer,
    /// The attention's blocks, from `cu_seqlens`.
    pub blocks: PackedBlocks,
}

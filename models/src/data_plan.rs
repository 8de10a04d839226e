//! [`DataPlan`]: which sequences each optimizer step trains on. An epoch visits every sequence
//! once in an order shuffled from the run's seed and the epoch number; a step takes the next
//! sequences of that order while they fit in `tokens_per_step` (at least one, and never across
//! an epoch's end), and packs them Best-Fit-Decreasing into micro-batches of at most
//! `max_seq_len` tokens. Where a run is, is a [`Cursor`] (epoch, position): all a checkpoint needs
//! to continue with the same batches.

use serde::{Deserialize, Serialize};

use crate::batch::{Sequence, IGNORE_INDEX};
use crate::packing::best_fit_decreasing;
use crate::rng::{derive, SplitMix64};
use crate::{Error, Result};

/// A position in the data: the next sequence of an epoch's order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: usize,
    pub position: usize,
}

/// The sequences of one step, as micro-batches (indices into the plan's sequences).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepData {
    pub micro_batches: Vec<Vec<usize>>,
    /// The cursor after this step.
    pub next: Cursor,
}

/// The training sequences and how they are split into steps.
pub struct DataPlan {
    pub sequences: Vec<Sequence>,
    pub tokens_per_step: usize,
    pub max_seq_len: usize,
    seed: u64,
    /// The order of the epoch last asked for, cached.
    order: std::cell::RefCell<Option<(usize, Vec<usize>)>>,
}

/// What preparing the sequences did to them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prepared {
    /// Sequences cut to `max_seq_len` tokens.
    pub truncated: usize,
    /// Tokens cut off them.
    pub tokens_dropped: usize,
}

/// Truncates sequences longer than `max_seq_len` (or refuses them when `truncate` is false,
/// naming the first), and refuses data with no token to predict at all.
pub fn prepare(
    sequences: &mut [Sequence],
    max_seq_len: usize,
    truncate: bool,
    source: &str,
) -> Result<Prepared> {
    let mut report = Prepared::default();
    for (i, s) in sequences.iter_mut().enumerate() {
        let n = s.input_ids.len();
        if n <= max_seq_len {
            continue;
        }
        if !truncate {
            return Err(Error::format(
                source,
                format!(
                    "sequence {} has {n} tokens, more than --max-seq-len {max_seq_len} \
                     (without --no-truncate it would be truncated)",
                    i + 1
                ),
            ));
        }
        s.input_ids.truncate(max_seq_len);
        if let Some(labels) = &mut s.labels {
            labels.truncate(max_seq_len);
        }
        report.truncated += 1;
        report.tokens_dropped += n - max_seq_len;
    }
    if !sequences.iter().any(|s| predicted(s) > 0) {
        return Err(Error::format(
            source,
            "no sequence has a token to predict (each needs two tokens, and labels other than \
             -100): training on it would learn nothing",
        ));
    }
    Ok(report)
}

/// The tokens a sequence contributes to the loss (its labels, shifted once, as packing does).
pub fn predicted(s: &Sequence) -> usize {
    let n = s.input_ids.len();
    match &s.labels {
        None => n.saturating_sub(1),
        Some(labels) => labels
            .iter()
            .skip(1)
            .filter(|&&l| l != IGNORE_INDEX)
            .count(),
    }
}

impl DataPlan {
    pub fn new(
        sequences: Vec<Sequence>,
        tokens_per_step: usize,
        max_seq_len: usize,
        seed: u64,
    ) -> Result<DataPlan> {
        if sequences.is_empty() {
            return Err(Error::Invalid("no training sequences".into()));
        }
        if max_seq_len == 0 || tokens_per_step == 0 {
            return Err(Error::Invalid(
                "--max-seq-len and --tokens-per-step must be at least 1".into(),
            ));
        }
        Ok(DataPlan {
            sequences,
            tokens_per_step,
            max_seq_len,
            seed,
            order: Default::default(),
        })
    }

    /// The order of epoch `epoch`: a permutation drawn from the seed and the epoch.
    fn order(&self, epoch: usize) -> Vec<usize> {
        if let Some((e, order)) = &*self.order.borrow() {
            if *e == epoch {
                return order.clone();
            }
        }
        let mut order: Vec<usize> = (0..self.sequences.len()).collect();
        SplitMix64::new(derive(self.seed, &[0x0da7a, epoch as u64])).shuffle(&mut order);
        *self.order.borrow_mut() = Some((epoch, order.clone()));
        order
    }

    /// The step that starts at `cursor`.
    pub fn step(&self, cursor: Cursor) -> StepData {
        let order = self.order(cursor.epoch);
        let mut taken = vec![];
        let mut tokens = 0;
        let mut position = cursor.position;
        while position < order.len() {
            let i = order[position];
            let n = self.sequences[i].input_ids.len();
            if !taken.is_empty() && tokens + n > self.tokens_per_step {
                break;
            }
            taken.push(i);
            tokens += n;
            position += 1;
        }
        let next = if position >= order.len() {
            Cursor {
                epoch: cursor.epoch + 1,
                position: 0,
            }
        } else {
            Cursor {
                epoch: cursor.epoch,
                position,
            }
        };
        let lengths: Vec<usize> = taken
            .iter()
            .map(|&i| self.sequences[i].input_ids.len())
            .collect();
        let micro_batches = best_fit_decreasing(&lengths, self.max_seq_len)
            .into_iter()
            .map(|bin| bin.into_iter().map(|k| taken[k]).collect())
            .collect();
        StepData {
            micro_batches,
            next,
        }
    }

    /// How many steps one epoch takes.
    pub fn steps_per_epoch(&self) -> usize {
        let mut cursor = Cursor::default();
        let mut steps = 0;
        while cursor.epoch == 0 {
            cursor = self.step(cursor).next;
            steps += 1;
        }
        steps
    }

    /// Real tokens over the capacity of the micro-batches of one epoch (`max_seq_len` each).
    pub fn packing_efficiency(&self) -> f64 {
        let (mut tokens, mut bins) = (0usize, 0usize);
        let mut cursor = Cursor::default();
        while cursor.epoch == 0 {
            let step = self.step(cursor);
            bins += step.micro_batches.len();
            tokens += step
                .micro_batches
                .iter()
                .flatten()
                .map(|&i| self.sequences[i].input_ids.len())
                .sum::<usize>();
            cursor = step.next;
        }
        tokens as f64 / (bins * self.max_seq_len) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(lengths: &[usize]) -> Vec<Sequence> {
        lengths
            .iter()
            .map(|&n| Sequence::new((0..n as u32).collect()))
            .collect()
    }

    #[test]
    fn steps_cover_each_epoch_once_within_the_budget() {
        let lengths = [5, 9, 1, 7, 3, 3, 12, 4, 8, 2, 6];
        let plan = DataPlan::new(seqs(&lengths), 16, 8, 3).unwrap();
        for epoch in 0..3 {
            let mut cursor = Cursor { epoch, position: 0 };
            let mut seen = vec![];
            while cursor.epoch == epoch {
                let step = plan.step(cursor);
                let members: Vec<usize> = step.micro_batches.iter().flatten().copied().collect();
                let tokens: usize = members.iter().map(|&i| lengths[i]).sum();
                assert!(members.len() == 1 || tokens <= 16, "{tokens}");
                for bin in &step.micro_batches {
                    let t: usize = bin.iter().map(|&i| lengths[i]).sum();
                    assert!(bin.len() == 1 || t <= 8);
                }
                seen.extend(members);
                cursor = step.next;
            }
            seen.sort_unstable();
            assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        }
        // Epochs are shuffled differently, and the same seed gives the same order.
        assert_ne!(plan.order(0), plan.order(1));
        let again = DataPlan::new(seqs(&lengths), 16, 8, 3).unwrap();
        assert_eq!(plan.order(1), again.order(1));
    }

    #[test]
    fn long_sequences_are_truncated_or_refused_and_empty_targets_refused() {
        let mut s = seqs(&[10, 3]);
        let r = prepare(&mut s, 4, true, "d.jsonl").unwrap();
        assert_eq!((r.truncated, r.tokens_dropped), (1, 6));
        assert_eq!(s[0].input_ids.len(), 4);
        let mut s = seqs(&[10, 3]);
        let e = prepare(&mut s, 4, false, "d.jsonl")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("d.jsonl") && e.contains("sequence 1 has 10 tokens"),
            "{e}"
        );
        let mut s = seqs(&[1, 1]);
        let e = prepare(&mut s, 4, true, "d.jsonl").unwrap_err().to_string();
        assert!(e.contains("no sequence has a token to predict"), "{e}");
        let mut s = vec![Sequence {
            input_ids: vec![1, 2, 3],
            labels: Some(vec![-100, -100, -100]),
        }];
        assert!(prepare(&mut s, 4, true, "d.jsonl").is_err());
    }
}

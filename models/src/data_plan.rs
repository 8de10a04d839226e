//! [`DataPlan`]: which examples each optimizer step trains on.
//!
//! Examples longer than `max_seq_len` are first truncated, split, or refused ([`LongExamples`]).
//! Each epoch then shuffles the examples (from the run's seed and the epoch number), packs them
//! Best-Fit-Decreasing into bins of at most `max_seq_len` tokens, and shuffles the bins; a step
//! takes the next bins while their tokens fit in `tokens_per_step` (at least one bin, never
//! across an epoch's end), one micro-batch per bin. Where a run is, is a [`Cursor`] (epoch,
//! bin): all a checkpoint needs to continue with the same batches.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::batch::{Sequence, IGNORE_INDEX};
use crate::data::TokenStore;
use crate::packing::best_fit_decreasing;
use crate::rng::{derive, SplitMix64};
use crate::{Error, Result};

/// A position in the data: the next bin of an epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: usize,
    pub position: usize,
}

/// The examples of one step, as micro-batches (indices into the plan's examples).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepData {
    pub micro_batches: Vec<Vec<usize>>,
    /// The cursor after this step.
    pub next: Cursor,
}

/// What to do with an example longer than `max_seq_len`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LongExamples {
    /// Keep its first `max_seq_len` tokens.
    #[default]
    Truncate,
    /// Cut it into pieces of `max_seq_len` tokens that overlap by one, so every token but the
    /// first is still a target exactly once (a piece's first token is context only).
    Split,
    /// Refuse the data, naming the example.
    Refuse,
}

impl std::str::FromStr for LongExamples {
    type Err = String;
    fn from_str(s: &str) -> Result<LongExamples, String> {
        match s {
            "truncate" => Ok(LongExamples::Truncate),
            "split" => Ok(LongExamples::Split),
            "refuse" => Ok(LongExamples::Refuse),
            _ => Err(format!(
                "unknown policy `{s}` (expected truncate, split or refuse)"
            )),
        }
    }
}

/// A run of tokens of one stored example: what a training example is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    example: u32,
    start: u32,
    len: u32,
}

/// Training examples: tokenized examples (in memory or memory-mapped) and the pieces of them
/// that are trained on.
#[derive(Clone, Debug)]
pub struct Examples {
    store: Arc<TokenStore>,
    pieces: Vec<Piece>,
}

/// What fitting the examples into `max_seq_len` did to them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prepared {
    /// Examples longer than `max_seq_len`.
    pub long: usize,
    /// Tokens cut off them (truncation).
    pub tokens_dropped: usize,
    /// Extra pieces they became (splitting).
    pub extra_pieces: usize,
    /// Pieces dropped because nothing in them is a target (a truncated prompt/completion whose
    /// completion was cut off).
    pub without_targets: usize,
}

impl Examples {
    /// Every sequence, whole (labels must be aligned with the ids).
    pub fn from_sequences(sequences: &[Sequence]) -> Result<Examples> {
        Ok(Examples::whole(Arc::new(TokenStore::from_sequences(
            sequences,
        )?)))
    }

    /// Every example of `store`, whole.
    pub fn whole(store: Arc<TokenStore>) -> Examples {
        let pieces = (0..store.len())
            .map(|i| Piece {
                example: i as u32,
                start: 0,
                len: store.example_len(i) as u32,
            })
            .collect();
        Examples { store, pieces }
    }

    /// The examples of `store` fitted into `max_seq_len` tokens by `long`; `source` names the
    /// data in errors. Data with no target at all is refused.
    pub fn prepare(
        store: Arc<TokenStore>,
        max_seq_len: usize,
        long: LongExamples,
        source: &str,
    ) -> Result<(Examples, Prepared)> {
        if max_seq_len < 2 {
            return Err(Error::Invalid(
                "--max-seq-len must be at least 2 (a token and the next one)".into(),
            ));
        }
        let mut report = Prepared::default();
        let mut pieces = Vec::with_capacity(store.len());
        for i in 0..store.len() {
            let n = store.example_len(i);
            let piece = |start: usize, len: usize| Piece {
                example: i as u32,
                start: start as u32,
                len: len as u32,
            };
            if n <= max_seq_len {
                pieces.push(piece(0, n));
                continue;
            }
            report.long += 1;
            match long {
                LongExamples::Refuse => {
                    return Err(Error::format(
                        source,
                        format!(
                            "example {} has {n} tokens, more than --max-seq-len {max_seq_len} \
                             (--long-examples truncate or split would keep it)",
                            i + 1
                        ),
                    ))
                }
                LongExamples::Truncate => {
                    report.tokens_dropped += n - max_seq_len;
                    pieces.push(piece(0, max_seq_len));
                }
                LongExamples::Split => {
                    let mut start = 0;
                    loop {
                        let len = max_seq_len.min(n - start);
                        pieces.push(piece(start, len));
                        if start + len >= n {
                            break;
                        }
                        report.extra_pieces += 1;
                        start += max_seq_len - 1;
                    }
                }
            }
        }
        let before = pieces.len();
        pieces.retain(|p| {
            let labels = store.slice(
                p.example as usize,
                p.start as usize..(p.start + p.len) as usize,
            );
            predicted(&labels) > 0
        });
        report.without_targets = before - pieces.len();
        if pieces.is_empty() {
            return Err(Error::format(
                source,
                "no example has a token to predict (each needs two tokens, and labels other \
                 than -100): training on it would learn nothing",
            ));
        }
        Ok((Examples { store, pieces }, report))
    }

    /// The number of examples.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The number of tokens of example `i`.
    pub fn example_len(&self, i: usize) -> usize {
        self.pieces[i].len as usize
    }

    /// Example `i`.
    pub fn get(&self, i: usize) -> Sequence {
        let p = self.pieces[i];
        self.store.slice(
            p.example as usize,
            p.start as usize..(p.start + p.len) as usize,
        )
    }

    /// Every example, in memory.
    pub fn to_sequences(&self) -> Vec<Sequence> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }

    /// The tokens of all examples.
    pub fn tokens(&self) -> usize {
        self.pieces.iter().map(|p| p.len as usize).sum()
    }

    /// A split of the examples: those at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Examples {
        Examples {
            store: self.store.clone(),
            pieces: indices.iter().map(|&i| self.pieces[i]).collect(),
        }
    }
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

/// The bins of an epoch: each a list of example indices.
pub type Bins = Arc<Vec<Vec<usize>>>;

/// The training examples and how they are split into steps.
pub struct DataPlan {
    pub examples: Examples,
    pub tokens_per_step: usize,
    pub max_seq_len: usize,
    seed: u64,
    /// The bins of the epoch last asked for, cached.
    bins: std::cell::RefCell<Option<(usize, Bins)>>,
}

impl DataPlan {
    pub fn new(
        examples: Examples,
        tokens_per_step: usize,
        max_seq_len: usize,
        seed: u64,
    ) -> Result<DataPlan> {
        if examples.is_empty() {
            return Err(Error::Invalid("no training examples".into()));
        }
        if max_seq_len == 0 || tokens_per_step == 0 {
            return Err(Error::Invalid(
                "--max-seq-len and --tokens-per-step must be at least 1".into(),
            ));
        }
        Ok(DataPlan {
            examples,
            tokens_per_step,
            max_seq_len,
            seed,
            bins: Default::default(),
        })
    }

    /// The bins of epoch `epoch`: the examples shuffled, packed Best-Fit-Decreasing (equal
    /// lengths in shuffled order), the bins shuffled.
    pub fn bins(&self, epoch: usize) -> Bins {
        if let Some((e, bins)) = &*self.bins.borrow() {
            if *e == epoch {
                return bins.clone();
            }
        }
        let mut order: Vec<usize> = (0..self.examples.len()).collect();
        SplitMix64::new(derive(self.seed, &[0x0da7a, epoch as u64])).shuffle(&mut order);
        let lengths: Vec<usize> = order
            .iter()
            .map(|&i| self.examples.example_len(i))
            .collect();
        let mut bins: Vec<Vec<usize>> = best_fit_decreasing(&lengths, self.max_seq_len)
            .into_iter()
            .map(|bin| bin.into_iter().map(|k| order[k]).collect())
            .collect();
        SplitMix64::new(derive(self.seed, &[0xb1a5, epoch as u64])).shuffle(&mut bins);
        let bins = Arc::new(bins);
        *self.bins.borrow_mut() = Some((epoch, bins.clone()));
        bins
    }

    fn bin_tokens(&self, bin: &[usize]) -> usize {
        bin.iter().map(|&i| self.examples.example_len(i)).sum()
    }

    /// The step that starts at `cursor`.
    pub fn step(&self, cursor: Cursor) -> StepData {
        let bins = self.bins(cursor.epoch);
        let mut micro_batches = vec![];
        let mut tokens = 0;
        let mut position = cursor.position;
        while position < bins.len() {
            let n = self.bin_tokens(&bins[position]);
            if !micro_batches.is_empty() && tokens + n > self.tokens_per_step {
                break;
            }
            micro_batches.push(bins[position].clone());
            tokens += n;
            position += 1;
        }
        let next = if position >= bins.len() {
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

    /// Real tokens over the capacity of the bins of one epoch (`max_seq_len` each).
    pub fn packing_efficiency(&self) -> f64 {
        let bins = self.bins(0);
        self.examples.tokens() as f64 / (bins.len() * self.max_seq_len) as f64
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

    fn store(lengths: &[usize]) -> Arc<TokenStore> {
        Arc::new(TokenStore::from_sequences(&seqs(lengths)).unwrap())
    }

    #[test]
    fn steps_cover_each_epoch_once_within_the_budget() {
        let lengths = [5, 9, 1, 7, 3, 3, 12, 4, 8, 2, 6];
        let (examples, _) =
            Examples::prepare(store(&lengths), 8, LongExamples::Split, "d").unwrap();
        let lengths: Vec<usize> = (0..examples.len())
            .map(|i| examples.example_len(i))
            .collect();
        let plan = DataPlan::new(examples, 16, 8, 3).unwrap();
        for epoch in 0..3 {
            let mut cursor = Cursor { epoch, position: 0 };
            let mut seen = vec![];
            while cursor.epoch == epoch {
                let step = plan.step(cursor);
                let tokens: usize = step
                    .micro_batches
                    .iter()
                    .flatten()
                    .map(|&i| lengths[i])
                    .sum();
                assert!(step.micro_batches.len() == 1 || tokens <= 16, "{tokens}");
                for bin in &step.micro_batches {
                    assert!(bin.iter().map(|&i| lengths[i]).sum::<usize>() <= 8);
                }
                seen.extend(step.micro_batches.into_iter().flatten());
                cursor = step.next;
            }
            seen.sort_unstable();
            assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        }
        // Epochs are shuffled differently, and the same seed gives the same bins.
        assert_ne!(plan.bins(0), plan.bins(1));
        let (examples, _) = Examples::prepare(
            store(&[5, 9, 1, 7, 3, 3, 12, 4, 8, 2, 6]),
            8,
            LongExamples::Split,
            "d",
        )
        .unwrap();
        let again = DataPlan::new(examples, 16, 8, 3).unwrap();
        assert_eq!(plan.bins(1), again.bins(1));
    }

    #[test]
    fn long_examples_are_truncated_split_or_refused_and_empty_targets_refused() {
        let (e, r) = Examples::prepare(store(&[10, 3]), 4, LongExamples::Truncate, "d").unwrap();
        assert_eq!((r.long, r.tokens_dropped, e.len()), (1, 6, 2));
        assert_eq!(e.get(0).input_ids, vec![0, 1, 2, 3]);

        // Pieces overlap by one token: every token after the first is a target exactly once.
        let (e, r) = Examples::prepare(store(&[10, 3]), 4, LongExamples::Split, "d").unwrap();
        assert_eq!((r.long, r.extra_pieces), (1, 2));
        let pieces: Vec<Vec<u32>> = (0..e.len()).map(|i| e.get(i).input_ids).collect();
        assert_eq!(
            pieces,
            vec![
                vec![0, 1, 2, 3],
                vec![3, 4, 5, 6],
                vec![6, 7, 8, 9],
                vec![0, 1, 2]
            ]
        );

        let err = Examples::prepare(store(&[10, 3]), 4, LongExamples::Refuse, "d.jsonl")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("d.jsonl") && err.contains("example 1 has 10 tokens"),
            "{err}"
        );
        let err = Examples::prepare(store(&[1, 1]), 4, LongExamples::Truncate, "d.jsonl")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no example has a token to predict"), "{err}");

        // A prompt whose completion is cut off is dropped and counted.
        let s = vec![
            Sequence {
                input_ids: vec![1, 2, 3, 4, 5, 6],
                labels: Some(vec![-100, -100, -100, -100, 5, 6]),
            },
            Sequence::new(vec![1, 2]),
        ];
        let store = Arc::new(TokenStore::from_sequences(&s).unwrap());
        let (e, r) = Examples::prepare(store, 4, LongExamples::Truncate, "d").unwrap();
        assert_eq!((e.len(), r.without_targets), (1, 1));
    }
}

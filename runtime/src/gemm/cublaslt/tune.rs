//! Choosing a product's algorithm by measurement.
//!
//! cuBLASLt's heuristic ranks its algorithms by a model of the GPU. At the large square-ish
//! shapes its first pick is the fastest, but at the skinny ones of a training step (LoRA's
//! rank-wide products, weight gradients summed over 8,192 tokens into a few hundred rows) a
//! lower-ranked candidate, often one that splits the long dimension, can be several times
//! faster, and even at the large ones a lower-ranked candidate is often a few percent faster
//! (on the H200, 2026-12-04: 1.8-2.2 ms of a 0.5B model's 36-39 ms of GEMMs a step, mostly at
//! the large shapes; full fine-tuning +2-4%). So on first
//! sight of a class of shapes ([`Class`]) the product runs with the heuristic's first pick
//! while each of its first [`CANDIDATES`] is also queued a few times between two events.
//! Nothing waits: a later product of the class whose events have all completed reads their
//! times and keeps the fastest for the class (on a new shape only if cuBLASLt accepts it
//! there).
//!
//! A choice by timing can differ from process to process, and a class switches from the first
//! pick to its choice once measured, so products are then no longer bit-for-bit reproducible
//! across runs. `KILN_GEMM_TUNE=0` keeps the heuristic's first pick: the deterministic mode.

use std::collections::HashMap;
use std::sync::OnceLock;

use cudarc::cublaslt::sys;
use cudarc::driver::CudaEvent;

use super::Key;

/// How many of the heuristic's candidates are measured.
pub(super) const CANDIDATES: usize = 8;

/// Runs of each candidate between its two events (after one unmeasured run).
pub(super) const RUNS: usize = 3;

/// The largest scratch output a product that adds to its output is measured with (a
/// vocabulary-wide weight gradient, half a GiB, would raise the step's peak memory by as
/// much): larger ones keep the heuristic's pick.
pub(super) const SCRATCH_MAX: usize = 64 << 20;

/// Whether products are tuned: unless `KILN_GEMM_TUNE=0` (read once).
pub(crate) fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_GEMM_TUNE").map_or(true, |v| v != "0"))
}

/// Shapes that share a measured choice: the key with each dimension rounded up to a power of
/// two, so that the varying token counts of packed batches reuse one measurement (a step of
/// 7,900 tokens and one of 8,100 are the same class).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Class(Key);

impl Class {
    pub(super) fn of(key: &Key) -> Class {
        let mut k = *key;
        k.mnk = k.mnk.map(usize::next_power_of_two);
        Class(k)
    }
}

/// One candidate queued on the device: its runs lie between `start` and `end`.
pub(super) struct Trial {
    pub(super) algo: sys::cublasLtMatmulAlgo_t,
    pub(super) start: CudaEvent,
    pub(super) end: CudaEvent,
}

enum State {
    /// Trials queued, not all finished when last looked at; `first` is the heuristic's pick,
    /// kept if no trial's time can be read.
    Measuring {
        first: sys::cublasLtMatmulAlgo_t,
        trials: Vec<Trial>,
    },
    /// The fastest candidate measured (or the only one there was).
    Chosen(sys::cublasLtMatmulAlgo_t),
}

/// The measurements per class of shapes.
#[derive(Default)]
pub(super) struct Tuning {
    classes: HashMap<Class, State>,
}

impl Tuning {
    /// Whether `class` has been measured or is being measured.
    pub(super) fn knows(&self, class: &Class) -> bool {
        self.classes.contains_key(class)
    }

    /// Starts measuring `class` with `trials` (none: nothing to choose between, keep `first`).
    pub(super) fn start(
        &mut self,
        class: Class,
        first: sys::cublasLtMatmulAlgo_t,
        trials: Vec<Trial>,
    ) {
        let state = match trials.is_empty() {
            true => State::Chosen(first),
            false => State::Measuring { first, trials },
        };
        self.classes.insert(class, state);
    }

    /// The chosen algorithm of `class` once its trials have all finished (never waits).
    pub(super) fn chosen(&mut self, class: &Class) -> Option<sys::cublasLtMatmulAlgo_t> {
        let state = self.classes.get_mut(class)?;
        if let State::Measuring { first, trials } = state {
            // An event that cannot be queried counts as unfinished; a trial whose time cannot
            // be read is left out.
            let done = |t: &Trial| t.end.try_is_complete().unwrap_or(false);
            if !trials.iter().all(done) {
                return None;
            }
            let fastest = trials
                .iter()
                .filter_map(|t| Some((t.start.elapsed_ms(&t.end).ok()?, t.algo)))
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map_or(*first, |(_, algo)| algo);
            *state = State::Chosen(fastest);
        }
        match state {
            State::Chosen(algo) => Some(*algo),
            State::Measuring { .. } => None,
        }
    }
}

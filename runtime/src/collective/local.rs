//! [`LocalGroup`]: the in-process stand-in for NCCL, **for tests**: the ranks are threads of one
//! process (on CPU devices), and every collective is an exchange of the ranks' bytes through
//! shared memory. Sums are taken on the host in rank order, so every rank gets the same bits.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::sum::{decode, encode, sum_in_order};
use super::{check_parts, check_root, check_sum_type, check_summable, Communicator};
use crate::{Buffer, Error, Result};

/// The bytes of each buffer one rank brings to a collective.
type Parts = Vec<Vec<u8>>;

/// One rank of an in-process group of threads: a [`Communicator`] for tests of data-parallel
/// code on CPU devices, never a transport between processes. Made by [`LocalGroup::ranks`];
/// give each thread one.
pub struct LocalGroup {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    world: usize,
    timeout: Duration,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Collectives completed so far.
    round: u64,
    /// The description of the collective under way (the first rank to arrive sets it).
    op: Option<String>,
    /// What each rank brought to it (`None`: not arrived yet).
    parts: Vec<Option<Parts>>,
    /// What every rank brought to the last completed one, by rank.
    done: Arc<Vec<Parts>>,
    /// Set once a collective failed (timeout, mismatch): every later call fails with it.
    broken: Option<String>,
}

impl LocalGroup {
    /// The `world` ranks of a new group whose collectives fail after waiting `timeout` for
    /// the other ranks.
    pub fn ranks(world: usize, timeout: Duration) -> Vec<LocalGroup> {
        let shared = Arc::new(Shared {
            world,
            timeout,
            state: Mutex::new(State {
                parts: vec![None; world],
                ..State::default()
            }),
            changed: Condvar::new(),
        });
        (0..world)
            .map(|rank| LocalGroup {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A rank that panicked mid-collective leaves consistent state behind (only whole
        // assignments happen under the lock), so a poisoned lock is still usable.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Brings `parts` to the collective described by `op` and returns what every rank brought.
    fn exchange(&self, op: String, parts: Parts) -> Result<Arc<Vec<Parts>>> {
        let mut state = self.lock();
        if let Some(e) = &state.broken {
            return Err(Error::Distributed(e.clone()));
        }
        match &state.op {
            Some(current) if *current != op => {
                let e = format!(
                    "rank {} issued {op} while other ranks issued {current}: the ranks' \
                     collectives differ",
                    self.rank
                );
                return Err(self.break_group(&mut state, e));
            }
            Some(_) => {}
            None => state.op = Some(op.clone()),
        }
        state.parts[self.rank] = Some(parts);
        let round = state.round;
        if state.parts.iter().all(Option::is_some) {
            let all = state.parts.iter_mut().map(|p| p.take().unwrap_or_default());
            state.done = Arc::new(all.collect());
            state.round += 1;
            state.op = None;
            self.shared.changed.notify_all();
            return Ok(state.done.clone());
        }
        let deadline = Instant::now() + self.shared.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (next, _) = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state = next;
            if state.round != round {
                return Ok(state.done.clone());
            }
            if let Some(e) = &state.broken {
                return Err(Error::Distributed(e.clone()));
            }
            if Instant::now() >= deadline {
                let missing: Vec<String> = (0..self.shared.world)
                    .filter(|&r| state.parts[r].is_none())
                    .map(|r| r.to_string())
                    .collect();
                let e = format!(
                    "{op}: rank(s) {} did not join within {:.1} s (they exited, hang, or issue \
                     other collectives)",
                    missing.join(", "),
                    self.shared.timeout.as_secs_f64()
                );
                return Err(self.break_group(&mut state, e));
            }
        }
    }

    fn break_group(&self, state: &mut State, message: String) -> Error {
        state.broken = Some(message.clone());
        self.shared.changed.notify_all();
        Error::Distributed(message)
    }
}

/// `op of what (lengths and types of buffers)`: ranks must agree on it.
fn describe(op: &str, what: &str, buffers: &[&Buffer]) -> String {
    let shapes: Vec<String> = buffers
        .iter()
        .map(|b| format!("{} x {}", b.len(), b.dtype()))
        .collect();
    format!("{op} of {what} [{}]", shapes.join(", "))
}

fn shared_refs<'a>(buffers: &'a [&mut Buffer]) -> Vec<&'a Buffer> {
    buffers.iter().map(|b| &**b).collect()
}

impl Communicator for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, buffers: &mut [&mut Buffer], what: &str) -> Result<()> {
        check_summable(buffers, "all-reduce", what)?;
        let op = describe("all-reduce", what, &shared_refs(buffers));
        let mine = buffers
            .iter()
            .map(|b| b.read_bytes())
            .collect::<Result<_>>()?;
        let all = self.exchange(op, mine)?;
        for (i, b) in buffers.iter_mut().enumerate() {
            let sum = sum_in_order(b.dtype(), all.iter().map(|p| p[i].as_slice()));
            b.write_bytes(&sum)?;
        }
        Ok(())
    }

    fn reduce_sum(&self, buffers: &mut [&mut Buffer], root: usize, what: &str) -> Result<()> {
        check_summable(buffers, "reduce", what)?;
        check_root(root, self.shared.world, "reduce", what)?;
        let op = format!(
            "{} to rank {root}",
            describe("reduce", what, &shared_refs(buffers))
        );
        let mine = buffers
            .iter()
            .map(|b| b.read_bytes())
            .collect::<Result<_>>()?;
        let all = self.exchange(op, mine)?;
        if self.rank == root {
            for (i, b) in buffers.iter_mut().enumerate() {
                let sum = sum_in_order(b.dtype(), all.iter().map(|p| p[i].as_slice()));
                b.write_bytes(&sum)?;
            }
        }
        Ok(())
    }

    fn broadcast(&self, buffers: &mut [&mut Buffer], root: usize, what: &str) -> Result<()> {
        check_root(root, self.shared.world, "broadcast", what)?;
        let op = format!(
            "{} from rank {root}",
            describe("broadcast", what, &shared_refs(buffers))
        );
        let mine = if self.rank == root {
            buffers
                .iter()
                .map(|b| b.read_bytes())
                .collect::<Result<_>>()?
        } else {
            vec![]
        };
        let all = self.exchange(op, mine)?;
        if self.rank != root {
            for (b, bytes) in buffers.iter_mut().zip(&all[root]) {
                b.write_bytes(bytes)?;
            }
        }
        Ok(())
    }

    fn all_gather(&self, input: &Buffer, output: &mut Buffer, what: &str) -> Result<()> {
        let world = self.shared.world;
        check_parts(input, output, world, "all-gather", what)?;
        let op = describe("all-gather", what, &[input]);
        let all = self.exchange(op, vec![input.read_bytes()?])?;
        let whole: Vec<u8> = all.iter().flat_map(|p| p[0].iter().copied()).collect();
        output.write_bytes(&whole)
    }

    fn reduce_scatter_sum(&self, input: &Buffer, output: &mut Buffer, what: &str) -> Result<()> {
        let world = self.shared.world;
        check_parts(output, input, world, "reduce-scatter", what)?;
        check_sum_type(output.dtype(), "reduce-scatter", what)?;
        let op = describe("reduce-scatter", what, &[input]);
        let all = self.exchange(op, vec![input.read_bytes()?])?;
        let dtype = input.dtype();
        let sum = decode(
            dtype,
            &sum_in_order(dtype, all.iter().map(|p| p[0].as_slice())),
        );
        let n = output.len();
        output.write_bytes(&encode(dtype, &sum[self.rank * n..(self.rank + 1) * n]))
    }

    fn join(&self) -> Result<()> {
        Ok(())
    }
}

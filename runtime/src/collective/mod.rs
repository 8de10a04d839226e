//! Collectives across the ranks of a data-parallel run.
//!
//! A [`Communicator`] sums, gathers and broadcasts [`Buffer`]s across ranks (one rank per
//! device). Two implementations:
//! - [`NcclCommunicator`] (the `cuda` feature): NCCL through cudarc's bindings, on a stream of
//!   its own so that collectives overlap the compute stream's work; [`Communicator::join`]
//!   makes the compute stream wait for them. NCCL is loaded at run time ([`nccl_library`]).
//! - [`LocalGroup`]: **a stand-in for tests**: ranks are threads of one process on CPU
//!   devices, meeting at a shared rendezvous. It sums in rank order, so its results are the
//!   same on every rank and from run to run.
//!
//! Either one returns an error naming the collective and the missing ranks when the others do
//! not join within a timeout ([`timeout_from_env`]), instead of waiting forever.
//!
//! Starting ranks: [`DistEnv`] reads the launch environment torchrun and SLURM set (`RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), and [`Rendezvous`] meets the
//! ranks over TCP to hand out NCCL's unique id, then watches the peers (a dead or silent peer
//! is reported within the timeout). No tensor data goes over TCP.

mod env;
mod local;
#[cfg(feature = "cuda")]
mod nccl;
#[cfg(feature = "cuda")]
mod nccl_load;
mod rendezvous;
mod sum;

use std::time::Duration;

use crate::{Buffer, Error, Result};

pub use env::DistEnv;
pub use local::LocalGroup;
#[cfg(feature = "cuda")]
pub use nccl::NcclCommunicator;
#[cfg(feature = "cuda")]
pub use nccl_load::{nccl_library, nccl_link_dir};
pub use rendezvous::{PeerWatch, Rendezvous, UNIQUE_ID_BYTES};

/// How long a collective or the rendezvous waits for the other ranks by default: PyTorch's
/// NCCL default. The others wait this long while rank 0 evaluates or writes a checkpoint.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The environment variable that sets the timeout, in seconds.
pub const TIMEOUT_VAR: &str = "KILN_DIST_TIMEOUT_S";

/// The timeout of collectives and of the rendezvous: `KILN_DIST_TIMEOUT_S` seconds (a positive
/// number) where it is set, else [`DEFAULT_TIMEOUT`]. The first step can be slow on a rank
/// whose kernels are not yet in the disk cache, so the default is generous.
pub fn timeout_from_env() -> Result<Duration> {
    match std::env::var(TIMEOUT_VAR) {
        Err(_) => Ok(DEFAULT_TIMEOUT),
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 => Ok(Duration::from_secs_f64(s)),
            _ => Err(Error::Distributed(format!(
                "{TIMEOUT_VAR}={v}: expected a positive number of seconds"
            ))),
        },
    }
}

/// Collectives over the ranks of a group, one rank per device. Every rank must issue the same
/// collectives in the same order with buffers of the same length and element type; `what`
/// names the data in errors (`"gradients of layer 3"`).
///
/// On a GPU the calls return once queued: the collectives run on the communicator's own
/// stream after everything the device's stream had queued when they were called, and the
/// device's stream waits for them only at [`Communicator::join`] (so the backward that follows
/// a bucket's all-reduce overlaps it). On a CPU device they are done when they return.
pub trait Communicator: Send + Sync {
    /// This rank, `0..world_size()`.
    fn rank(&self) -> usize;

    /// The number of ranks.
    fn world_size(&self) -> usize;

    /// Sums every buffer of `buffers` (f32 or bf16) over the ranks, in place: one collective
    /// call for all of them (NCCL fuses a group).
    fn all_reduce_sum(&self, buffers: &mut [&mut Buffer], what: &str) -> Result<()>;

    /// Sums every buffer over the ranks into `root`'s copy, one call for all; the other ranks'
    /// buffers are left as they were.
    fn reduce_sum(&self, buffers: &mut [&mut Buffer], root: usize, what: &str) -> Result<()>;

    /// Copies `root`'s buffers (any element type) into every other rank's, one call for all.
    fn broadcast(&self, buffers: &mut [&mut Buffer], root: usize, what: &str) -> Result<()>;

    /// Concatenates every rank's `input` (`n` elements) in rank order into `output`
    /// (`n × world_size()`) on every rank.
    fn all_gather(&self, input: &Buffer, output: &mut Buffer, what: &str) -> Result<()>;

    /// Sums `input` (`n × world_size()` elements, f32 or bf16) over the ranks and leaves rank
    /// `r` the sum's `r`-th part of `n` elements in `output`.
    fn reduce_scatter_sum(&self, input: &Buffer, output: &mut Buffer, what: &str) -> Result<()>;

    /// Makes the device's stream wait for every collective issued so far (without blocking the
    /// host), so that what follows on it reads their results; a no-op on a CPU device.
    fn join(&self) -> Result<()>;
}

/// Checks that `buffers` can be summed: f32 or bf16.
fn check_summable(buffers: &[&mut Buffer], op: &str, what: &str) -> Result<()> {
    buffers
        .iter()
        .try_for_each(|b| check_sum_type(b.dtype(), op, what))
}

/// Checks that buffers of `dtype` can be summed: f32 or bf16.
fn check_sum_type(dtype: kiln_compiler::DType, op: &str, what: &str) -> Result<()> {
    if !matches!(
        dtype,
        kiln_compiler::DType::F32 | kiln_compiler::DType::Bf16
    ) {
        return Err(Error::Distributed(format!(
            "{op} of {what}: only f32 and bf16 buffers can be summed, not {dtype}"
        )));
    }
    Ok(())
}

/// Checks a collective's root rank.
fn check_root(root: usize, world: usize, op: &str, what: &str) -> Result<()> {
    if root >= world {
        return Err(Error::Distributed(format!(
            "{op} of {what}: root rank {root} is not below the world size {world}"
        )));
    }
    Ok(())
}

/// Checks the lengths of an all-gather or reduce-scatter: `whole` = `part × world`.
fn check_parts(part: &Buffer, whole: &Buffer, world: usize, op: &str, what: &str) -> Result<()> {
    if part.dtype() != whole.dtype() || part.len() * world != whole.len() {
        return Err(Error::Distributed(format!(
            "{op} of {what}: the whole buffer must hold {world} parts of the rank's {} x {}, \
             not {} x {}",
            part.len(),
            part.dtype(),
            whole.len(),
            whole.dtype()
        )));
    }
    Ok(())
}

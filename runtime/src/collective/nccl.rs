//! [`NcclCommunicator`]: collectives over NCCL (cudarc's bindings), one rank per GPU.
//!
//! The collectives run on a stream of the communicator's own: each call first makes that
//! stream wait for what the device's stream has queued so far (the data it reduces), and
//! [`Communicator::join`] makes the device's stream wait for the collectives. So the backward
//! keeps computing while an earlier bucket's all-reduce runs. A watchdog thread follows every
//! collective through an event: one that has not completed after the timeout (a peer died or
//! hangs), or an asynchronous NCCL error, aborts the communicator, which ends its kernels, and
//! every later call returns that error.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaEvent, CudaStream};
use cudarc::nccl::{result, sys};
use kiln_compiler::DType;

use super::{check_parts, check_root, check_sum_type, check_summable, nccl_library, Communicator};
use crate::device::Inner;
use crate::{Buffer, Device, Error, Result};

/// A raw NCCL communicator. NCCL allows one to be used from any thread as long as calls do
/// not overlap; [`NcclCommunicator`] serialises its calls with a lock, and the watchdog only
/// queries or aborts it, which NCCL allows concurrently.
struct Handle(sys::ncclComm_t);
// SAFETY: see above; the pointer is only passed to NCCL.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

/// One rank of an NCCL communicator, on one GPU.
pub struct NcclCommunicator {
    comm: Arc<Handle>,
    /// Set once the watchdog aborted the communicator (NCCL freed it then).
    aborted: Arc<AtomicBool>,
    device: Device,
    compute: Arc<CudaStream>,
    stream: Arc<CudaStream>,
    rank: usize,
    world: usize,
    calls: Mutex<()>,
    watchdog: Watchdog,
}

impl NcclCommunicator {
    /// A new unique id for a communicator, made on rank 0 and handed to the other ranks
    /// (see [`super::Rendezvous`]): [`super::UNIQUE_ID_BYTES`] bytes.
    pub fn unique_id() -> Result<Vec<u8>> {
        nccl_library().map_err(|reason| Error::LibraryNotFound {
            library: "NCCL",
            reason,
        })?;
        let id = result::get_uniqueid().map_err(|e| nccl_error("making a unique id", e))?;
        Ok(id.internal.iter().map(|&c| c as u8).collect())
    }

    /// Joins the communicator of `world` ranks named by `id` as rank `rank`, on `device`'s GPU.
    /// Waits for every rank to join, for at most `timeout`; afterwards a collective that has
    /// not completed after `timeout` aborts the communicator with an error.
    pub fn new(
        device: &Device,
        rank: usize,
        world: usize,
        id: &[u8],
        timeout: Duration,
    ) -> Result<NcclCommunicator> {
        let Inner::Cuda(cuda) = device.inner() else {
            return Err(Error::Distributed(
                "NCCL needs a CUDA device (the in-process LocalGroup is the CPU's stand-in, \
                 for tests)"
                    .into(),
            ));
        };
        nccl_library().map_err(|reason| Error::LibraryNotFound {
            library: "NCCL",
            reason,
        })?;
        if rank >= world || world > i32::MAX as usize {
            return Err(Error::Distributed(format!(
                "NCCL: rank {rank} of a world of {world}"
            )));
        }
        let mut internal = [0 as std::ffi::c_char; super::UNIQUE_ID_BYTES];
        if id.len() != internal.len() {
            return Err(Error::Distributed(format!(
                "NCCL: a unique id has {} bytes, not {}",
                internal.len(),
                id.len()
            )));
        }
        for (d, &s) in internal.iter_mut().zip(id) {
            *d = s as std::ffi::c_char;
        }
        let ctx = cuda.context().clone();
        let stream = ctx
            .new_stream()
            .map_err(|e| Error::cuda("creating the collectives' stream", e))?;
        let comm = init_rank(&ctx, rank, world, sys::ncclUniqueId { internal }, timeout)?;
        let comm = Arc::new(Handle(comm));
        let aborted = Arc::new(AtomicBool::new(false));
        let watchdog = Watchdog::start(ctx, comm.clone(), aborted.clone(), rank, timeout);
        Ok(NcclCommunicator {
            comm,
            aborted,
            device: device.clone(),
            compute: cuda.stream().clone(),
            stream,
            rank,
            world,
            calls: Mutex::new(()),
            watchdog,
        })
    }

    /// Runs `issue` (NCCL calls on the collectives' stream) once that stream has caught up with
    /// the device's, inside an NCCL group, and hands the watchdog an event after it.
    fn collective(
        &self,
        buffers: &[&Buffer],
        op: &str,
        what: &str,
        issue: impl FnOnce(sys::ncclComm_t, sys::cudaStream_t) -> Result<()>,
    ) -> Result<()> {
        let _calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(failure) = self.watchdog.failure() {
            return Err(Error::Distributed(failure));
        }
        for b in buffers {
            if !b.device().same_device(&self.device) {
                return Err(Error::Distributed(format!(
                    "{op} of {what}: a buffer on {}, the communicator is on {}",
                    b.device(),
                    self.device
                )));
            }
        }
        self.stream
            .join(&self.compute)
            .map_err(|e| Error::cuda(format!("ordering {op} of {what}"), e))?;
        result::group_start().map_err(|e| nccl_error(&format!("{op} of {what}"), e))?;
        let issued = issue(self.comm.0, self.stream.cu_stream() as _);
        let ended = result::group_end().map_err(|e| nccl_error(&format!("{op} of {what}"), e));
        issued?;
        ended?;
        let event = self
            .stream
            .record_event(None)
            .map_err(|e| Error::cuda(format!("recording {op} of {what}"), e))?;
        self.watchdog
            .track(event, format!("{op} of {what} on rank {}", self.rank));
        Ok(())
    }
}

impl Drop for NcclCommunicator {
    fn drop(&mut self) {
        self.watchdog.stop();
        if !self.aborted.load(Ordering::SeqCst) {
            // Lets the collectives in flight finish first.
            let _ = self.stream.synchronize();
            // SAFETY: the communicator is live (not aborted) and no call is in progress.
            let _ = unsafe { result::comm_destroy(self.comm.0) };
        }
    }
}

fn nccl_type(dtype: DType) -> sys::ncclDataType_t {
    match dtype {
        DType::Bf16 => sys::ncclDataType_t::ncclBfloat16,
        DType::F16 => sys::ncclDataType_t::ncclFloat16,
        DType::I32 => sys::ncclDataType_t::ncclInt32,
        DType::I64 => sys::ncclDataType_t::ncclInt64,
        DType::Bool => sys::ncclDataType_t::ncclUint8,
        _ => sys::ncclDataType_t::ncclFloat32,
    }
}

fn nccl_error(context: &str, e: result::NcclError) -> Error {
    Error::Distributed(format!("NCCL error in {context}: {:?}", e.0))
}

fn ptr(b: &Buffer) -> *mut std::ffi::c_void {
    b.address() as usize as *mut std::ffi::c_void
}

fn check(what: &str, r: std::result::Result<result::NcclStatus, result::NcclError>) -> Result<()> {
    r.map(|_| ()).map_err(|e| nccl_error(what, e))
}

fn refs<'a>(buffers: &'a [&mut Buffer]) -> Vec<&'a Buffer> {
    buffers.iter().map(|b| &**b).collect()
}

impl Communicator for NcclCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, buffers: &mut [&mut Buffer], what: &str) -> Result<()> {
        check_summable(buffers, "all-reduce", what)?;
        let all = refs(buffers);
        self.collective(&all, "all-reduce", what, |comm, stream| {
            for b in &all {
                let p = ptr(b);
                // SAFETY: in place over the whole buffer, which outlives the call and is
                // only touched through the ordered streams; the group ends before return.
                let r = unsafe {
                    result::all_reduce(
                        p,
                        p,
                        b.len(),
                        nccl_type(b.dtype()),
                        sys::ncclRedOp_t::ncclSum,
                        comm,
                        stream,
                    )
                };
                check(what, r)?;
            }
            Ok(())
        })
    }

    fn reduce_sum(&self, buffers: &mut [&mut Buffer], root: usize, what: &str) -> Result<()> {
        check_summable(buffers, "reduce", what)?;
        check_root(root, self.world, "reduce", what)?;
        let all = refs(buffers);
        self.collective(&all, "reduce", what, |comm, stream| {
            for b in &all {
                let p = ptr(b);
                // SAFETY: as in all_reduce_sum.
                let r = unsafe {
                    result::reduce(
                        p,
                        p,
                        b.len(),
                        nccl_type(b.dtype()),
                        sys::ncclRedOp_t::ncclSum,
                        root as i32,
                        comm,
                        stream,
                    )
                };
                check(what, r)?;
            }
            Ok(())
        })
    }

    fn broadcast(&self, buffers: &mut [&mut Buffer], root: usize, what: &str) -> Result<()> {
        check_root(root, self.world, "broadcast", what)?;
        let all = refs(buffers);
        self.collective(&all, "broadcast", what, |comm, stream| {
            for b in &all {
                let p = ptr(b);
                // SAFETY: as in all_reduce_sum; bytes, whatever the element type.
                let r = unsafe {
                    result::broadcast(
                        p,
                        p,
                        b.size_bytes(),
                        sys::ncclDataType_t::ncclUint8,
                        root as i32,
                        comm,
                        stream,
                    )
                };
                check(what, r)?;
            }
            Ok(())
        })
    }

    fn all_gather(&self, input: &Buffer, output: &mut Buffer, what: &str) -> Result<()> {
        check_parts(input, output, self.world, "all-gather", what)?;
        let output = &*output;
        self.collective(&[input, output], "all-gather", what, |comm, stream| {
            // SAFETY: `output` holds world × `input`'s bytes (checked); both outlive the call.
            let r = unsafe {
                result::all_gather(
                    ptr(input),
                    ptr(output),
                    input.size_bytes(),
                    sys::ncclDataType_t::ncclUint8,
                    comm,
                    stream,
                )
            };
            check(what, r)
        })
    }

    fn reduce_scatter_sum(&self, input: &Buffer, output: &mut Buffer, what: &str) -> Result<()> {
        check_parts(output, input, self.world, "reduce-scatter", what)?;
        check_sum_type(output.dtype(), "reduce-scatter", what)?;
        let output = &*output;
        self.collective(&[input, output], "reduce-scatter", what, |comm, stream| {
            // SAFETY: `input` holds world × `output`'s elements (checked); both outlive the call.
            let r = unsafe {
                result::reduce_scatter(
                    ptr(input),
                    ptr(output),
                    output.len(),
                    nccl_type(output.dtype()),
                    sys::ncclRedOp_t::ncclSum,
                    comm,
                    stream,
                )
            };
            check(what, r)
        })
    }

    fn join(&self) -> Result<()> {
        if let Some(failure) = self.watchdog.failure() {
            return Err(Error::Distributed(failure));
        }
        self.compute
            .join(&self.stream)
            .map_err(|e| Error::cuda("waiting for the collectives", e))
    }
}

/// `ncclCommInitRank` on a thread of its own, so that a rank that never joins becomes an error
/// after `timeout` instead of a hang (the blocked thread is left behind: the run is over).
fn init_rank(
    ctx: &Arc<CudaContext>,
    rank: usize,
    world: usize,
    id: sys::ncclUniqueId,
    timeout: Duration,
) -> Result<sys::ncclComm_t> {
    let (tx, rx) = mpsc::channel();
    let ctx = ctx.clone();
    std::thread::spawn(move || {
        let made = ctx
            .bind_to_thread()
            .map_err(|e| Error::cuda("binding the CUDA context", e))
            .and_then(|()| {
                let mut comm = std::mem::MaybeUninit::uninit();
                // SAFETY: `comm` is written by NCCL before it is read; the id came from
                // ncclGetUniqueId on rank 0.
                let r = unsafe {
                    result::comm_init_rank(comm.as_mut_ptr(), world as i32, id, rank as i32)
                };
                check("joining the communicator", r)?;
                // SAFETY: initialised by the successful call above.
                Ok(Handle(unsafe { comm.assume_init() }))
            });
        let _ = tx.send(made);
    });
    match rx.recv_timeout(timeout) {
        Ok(made) => made.map(|h| h.0),
        Err(_) => Err(Error::Distributed(format!(
            "NCCL: rank {rank} waited {:.0} s for the other {} rank(s) to join the \
             communicator ({}: KILN_DIST_TIMEOUT_S)",
            timeout.as_secs_f64(),
            world - 1,
            super::TIMEOUT_VAR
        ))),
    }
}

/// Follows the collectives in flight; aborts the communicator when one is late or NCCL
/// reports an error.
struct Watchdog {
    in_flight: Arc<Mutex<VecDeque<(CudaEvent, String, Instant)>>>,
    failure: Arc<Mutex<Option<String>>>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    fn start(
        ctx: Arc<CudaContext>,
        comm: Arc<Handle>,
        aborted: Arc<AtomicBool>,
        rank: usize,
        timeout: Duration,
    ) -> Watchdog {
        let in_flight: Arc<Mutex<VecDeque<(CudaEvent, String, Instant)>>> = Arc::default();
        let failure: Arc<Mutex<Option<String>>> = Arc::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let (in_flight, failure, stopping) =
                (in_flight.clone(), failure.clone(), stopping.clone());
            std::thread::spawn(move || {
                let _ = ctx.bind_to_thread();
                while !stopping.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                    let late = {
                        let mut q = in_flight.lock().unwrap_or_else(|p| p.into_inner());
                        while q.front().is_some_and(|(e, _, _)| e.is_complete()) {
                            q.pop_front();
                        }
                        q.front()
                            .filter(|(_, _, at)| at.elapsed() > timeout)
                            .map(|(_, what, _)| {
                                format!(
                                    "{what}: not complete after {:.0} s: another rank died, \
                                     hangs or issued other collectives ({})",
                                    timeout.as_secs_f64(),
                                    super::TIMEOUT_VAR
                                )
                            })
                    };
                    let mut state = sys::ncclResult_t::ncclSuccess;
                    // SAFETY: queries a live communicator (aborts happen only here).
                    unsafe { sys::ncclCommGetAsyncError(comm.0, &mut state) };
                    let async_error = match state {
                        sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress => None,
                        e => Some(format!("NCCL failed on rank {rank}: {e:?}")),
                    };
                    if let Some(message) = late.or(async_error) {
                        *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
                        aborted.store(true, Ordering::SeqCst);
                        // SAFETY: abort may be called while other calls are blocked; it frees
                        // the communicator, which is never used again (`aborted`).
                        let _ = unsafe { result::comm_abort(comm.0) };
                        return;
                    }
                }
            })
        };
        Watchdog {
            in_flight,
            failure,
            stopping,
            thread: Some(thread),
        }
    }

    fn track(&self, event: CudaEvent, what: String) {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((event, what, Instant::now()));
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

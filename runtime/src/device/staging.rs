//! Page-locked host memory for copies that do not make the host wait.
//!
//! A copy from ordinary (pageable) memory either waits for the stream or, at the driver's
//! choice, stages the data itself: to keep a training step free of host round trips, small
//! uploads go through slots of pinned memory instead. The host fills a free slot, queues the
//! copy and records an event after it; the slot is free again once that event has completed
//! (queried, never waited for: when every slot is busy, a new one is allocated). Downloads that
//! can be read later ([`crate::Buffer::read_later`]) land in slots of a second pool, which is not
//! write-combined, so the host reads them at full speed.

use std::sync::{Arc, Mutex, PoisonError};

use cudarc::driver::{result, sys, CudaContext, CudaEvent, CudaStream};

use crate::{Error, Result};

/// The smallest slot allocated, in bytes (uploads of a step are a few KiB each).
const MIN_SLOT_BYTES: usize = 64 << 10;

/// One pinned allocation and the event recorded after the last copy that used it.
pub(crate) struct Slot {
    ptr: *mut u8,
    bytes: usize,
    done: CudaEvent,
    ctx: Arc<CudaContext>,
}

// SAFETY: the slot owns its allocation; the pool's mutex (or the one owner of a taken slot)
// serialises access to it.
unsafe impl Send for Slot {}

impl Slot {
    fn new(ctx: &Arc<CudaContext>, bytes: usize, flags: u32) -> Result<Slot> {
        let bytes = bytes.max(MIN_SLOT_BYTES).next_power_of_two();
        ctx.bind_to_thread()
            .map_err(|e| Error::cuda("binding the CUDA context", e))?;
        // SAFETY: a fresh allocation of `bytes` bytes, freed once in `Drop`.
        let ptr = unsafe { result::malloc_host(bytes, flags) }
            .map_err(|e| Error::cuda(format!("allocating {bytes} bytes of pinned memory"), e))?
            as *mut u8;
        let done = ctx
            .new_event(None)
            .map_err(|e| Error::cuda("creating an event", e))?;
        Ok(Slot {
            ptr,
            bytes,
            done,
            ctx: ctx.clone(),
        })
    }

    /// Whether the last copy through this slot has finished (a query; never waits).
    fn is_free(&self) -> bool {
        self.done.try_is_complete().unwrap_or(false)
    }

    /// The first `len` bytes, for the host to write or read. Only while no copy through the
    /// slot is in flight (the pools hand out free slots only; readers wait first).
    fn bytes_mut(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.bytes);
        // SAFETY: `ptr` holds `bytes` bytes owned by this slot, and no copy is using them.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len) }
    }

    fn record(&self, stream: &CudaStream) -> Result<()> {
        self.done
            .record(stream)
            .map_err(|e| Error::cuda("recording an event", e))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // A slot is dropped with its pool (the device) or after its reader waited.
        let _ = self.done.synchronize();
        let _ = self.ctx.bind_to_thread();
        // SAFETY: allocated by `malloc_host` in `Slot::new`, freed once here.
        let _ = unsafe { result::free_host(self.ptr as _) };
    }
}

/// Pinned slots of one kind (uploads: write-combined; downloads: cached).
pub(crate) struct Pool {
    ctx: Arc<CudaContext>,
    flags: u32,
    free: Mutex<Vec<Slot>>,
}

impl Pool {
    pub(crate) fn uploads(ctx: &Arc<CudaContext>) -> Arc<Pool> {
        Pool::new(ctx, sys::CU_MEMHOSTALLOC_WRITECOMBINED)
    }

    pub(crate) fn downloads(ctx: &Arc<CudaContext>) -> Arc<Pool> {
        Pool::new(ctx, 0)
    }

    fn new(ctx: &Arc<CudaContext>, flags: u32) -> Arc<Pool> {
        Arc::new(Pool {
            ctx: ctx.clone(),
            flags,
            free: Mutex::new(vec![]),
        })
    }

    /// A slot of at least `bytes` whose last copy has finished: the smallest such, or a new one.
    fn take(&self, bytes: usize) -> Result<Slot> {
        let mut slots = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let best = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.bytes >= bytes && s.is_free())
            .min_by_key(|(_, s)| s.bytes)
            .map(|(i, _)| i);
        match best {
            Some(i) => Ok(slots.swap_remove(i)),
            None => Slot::new(&self.ctx, bytes, self.flags),
        }
    }

    fn give_back(&self, slot: Slot) {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(slot);
    }

    /// Copies `src` to device address `dst` on `stream` through a pinned slot; returns as soon
    /// as the copy is queued, and `src` may be reused at once.
    pub(crate) fn upload(
        &self,
        stream: &CudaStream,
        dst: sys::CUdeviceptr,
        src: &[u8],
    ) -> Result<()> {
        let mut slot = self.take(src.len())?;
        slot.bytes_mut(src.len()).copy_from_slice(src);
        let queued = self.ctx.bind_to_thread().and_then(|()| {
            // SAFETY: the slot's bytes stay allocated and untouched until its event, recorded
            // right after the copy, completes (the pool hands it out again only then).
            unsafe { result::memcpy_htod_async(dst, slot.bytes_mut(src.len()), stream.cu_stream()) }
        });
        let recorded = queued
            .map_err(|e| Error::cuda(format!("uploading {} bytes", src.len()), e))
            .and_then(|()| slot.record(stream));
        self.give_back(slot);
        recorded
    }

    /// Queues a copy of `bytes` bytes from device address `src` into a pinned slot; the
    /// returned [`Pending`] waits for it.
    pub(crate) fn download(
        self: &Arc<Self>,
        stream: &CudaStream,
        src: sys::CUdeviceptr,
        bytes: usize,
    ) -> Result<Pending> {
        let mut slot = self.take(bytes)?;
        let queued = self.ctx.bind_to_thread().and_then(|()| {
            // SAFETY: the slot is owned by the returned `Pending`, which reads it only after
            // waiting for the event recorded after this copy.
            unsafe { result::memcpy_dtoh_async(slot.bytes_mut(bytes), src, stream.cu_stream()) }
        });
        queued.map_err(|e| Error::cuda(format!("downloading {bytes} bytes"), e))?;
        slot.record(stream)?;
        Ok(Pending {
            slot: Some(slot),
            bytes,
            pool: self.clone(),
        })
    }
}

/// A download in flight into a pinned slot.
pub(crate) struct Pending {
    slot: Option<Slot>,
    bytes: usize,
    pool: Arc<Pool>,
}

impl Pending {
    /// Whether the copy has finished (a query).
    pub(crate) fn is_ready(&self) -> bool {
        self.slot.as_ref().is_none_or(Slot::is_free)
    }

    /// Waits for the copy and copies the bytes out into `dst` (`bytes` long).
    pub(crate) fn wait_into(mut self, dst: &mut [u8]) -> Result<()> {
        let Some(mut slot) = self.slot.take() else {
            return Ok(());
        };
        slot.done.synchronize().map_err(|e| {
            Error::cuda(format!("waiting for a download of {} bytes", self.bytes), e)
        })?;
        dst.copy_from_slice(slot.bytes_mut(self.bytes));
        self.pool.give_back(slot);
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            // Not read: the slot goes back once its copy has finished (the pool checks).
            self.pool.give_back(slot);
        }
    }
}

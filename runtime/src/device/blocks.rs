//! A cache of freed device allocations, reused for the next allocation of the same size.
//!
//! A training step allocates and frees the same activations every step, about 600 of them
//! for a 24-layer model. Each `cuMemAllocAsync` / `cuMemFreeAsync` pair costs the host
//! microseconds and the stream an ordering point; on the H200 the host spent longer queueing a
//! 0.5B model's step than the GPU spent running it, so the step's pace was the host's. Freed
//! blocks are therefore kept here, by size, and handed out again at once: all of a device's
//! work is ordered on its one stream, so work queued after the reuse runs after all work
//! queued before the free, as the driver's own stream-ordered reuse guarantees. (The
//! collectives' stream joins the device's stream before the buffers it used are dropped.)
//!
//! The cache is bounded by the memory it can hold: an allocation the driver refuses for lack
//! of memory first returns every cached block and tries again.
//!
//! It is off unless `KILN_CUDA_BLOCK_CACHE=1`: measured on the H200 (bench/RESULTS.md,
//! 2026-12-04) it made the 0.5B step ~2% faster but held blocks of one size that another size
//! could have used, so the pool's peak grew from 16.2 to 19.3 GiB at fixed lengths and from 16.6
//! to 49.1 GiB at variable ones (each step's sizes differ). Blocks by exact size are the wrong policy; the
//! driver's stream-ordered pool reuses freed memory for any size.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use cudarc::driver::CudaSlice;

/// Allocations are rounded up to this many bytes, so that nearby sizes share blocks.
pub(crate) const GRANULE: usize = 512;

/// Freed blocks by size in bytes (a multiple of [`GRANULE`]).
#[derive(Default)]
pub(crate) struct BlockCache {
    free: Mutex<HashMap<usize, Vec<CudaSlice<u8>>>>,
}

impl BlockCache {
    /// Whether blocks are cached: `KILN_CUDA_BLOCK_CACHE=1` (read once).
    pub(crate) fn enabled() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| std::env::var("KILN_CUDA_BLOCK_CACHE").is_ok_and(|v| v == "1"))
    }

    /// A cached block of exactly `bytes`, if there is one.
    pub(crate) fn take(&self, bytes: usize) -> Option<CudaSlice<u8>> {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        free.get_mut(&bytes).and_then(Vec::pop)
    }

    /// Keeps a block that is no longer used (its length a multiple of [`GRANULE`]).
    pub(crate) fn put(&self, block: CudaSlice<u8>) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        free.entry(block.len()).or_default().push(block);
    }

    /// Frees every cached block (queued on the stream: the driver reuses the memory in order).
    pub(crate) fn release(&self) {
        let blocks = std::mem::take(&mut *self.free.lock().unwrap_or_else(PoisonError::into_inner));
        drop(blocks);
    }
}

//! Host memory for CPU buffers: zero-initialised and 64-byte aligned.
//!
//! A training step allocates and frees the same activation buffers, of the same sizes, every
//! step. Fresh large allocations come from the OS as untouched pages, so each step would pay a
//! page fault and a kernel page clear per 4 KiB before the memset; freed blocks of
//! [`POOL_MIN_BYTES`] or more are therefore kept in a process-wide pool (up to
//! [`pool_limit`] bytes, oldest dropped first) and handed out again for the same size, zeroed
//! in place ([`HostMem::reused`] skips the clear). [`trim_pool`] returns them to the allocator.

use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::{Error, Result};

/// Alignment of CPU buffers: a cache line, and enough for any vector load.
pub(crate) const HOST_ALIGN: usize = 64;

/// An owned, 64-byte aligned byte allocation.
///
/// Kernels and GEMMs write through the raw pointer while the runtime holds only `&HostMem`, as
/// a GPU writes device memory; so the bytes are never exposed as a long-lived Rust reference.
pub(crate) struct HostMem {
    ptr: NonNull<u8>,
    bytes: usize,
}

// SAFETY: `HostMem` owns its allocation like a `Box<[u8]>`; access is through raw pointers.
unsafe impl Send for HostMem {}
// SAFETY: through `&HostMem` memory is only read, except by a kernel or GEMM writing an output,
// which the launch API only accepts as a `BufferViewMut`: an exclusive borrow of the buffer.
unsafe impl Sync for HostMem {}

impl HostMem {
    /// `bytes` zero bytes.
    pub(crate) fn zeroed(bytes: usize) -> Result<HostMem> {
        if bytes == 0 {
            // A dangling but aligned pointer, as `Vec` uses for empty allocations.
            let ptr = NonNull::new(HOST_ALIGN as *mut u8).expect("non-zero");
            return Ok(HostMem { ptr, bytes });
        }
        let oom = || Error::OutOfMemory {
            bytes,
            device: "cpu".into(),
        };
        if let Some(ptr) = pool().take(bytes) {
            // SAFETY: a pooled block is a live allocation of exactly `bytes` that nothing else
            // refers to any more.
            unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, bytes) };
            return Ok(HostMem { ptr, bytes });
        }
        let layout = Layout::from_size_align(bytes, HOST_ALIGN).map_err(|_| oom())?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc::alloc_zeroed(layout) }).ok_or_else(oom)?;
        Ok(HostMem { ptr, bytes })
    }

    /// `bytes` bytes whose contents are unspecified: a pooled block as its last user left it
    /// (initialised memory: it was zeroed when first allocated), else fresh zeroed memory.
    pub(crate) fn reused(bytes: usize) -> Result<HostMem> {
        match pool().take(bytes) {
            Some(ptr) => Ok(HostMem { ptr, bytes }),
            None => HostMem::zeroed(bytes),
        }
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        if self.bytes >= POOL_MIN_BYTES {
            pool().put(self.bytes, self.ptr);
        } else if self.bytes != 0 {
            // SAFETY: allocated in `zeroed` with this layout, and no longer used.
            unsafe { free(self.ptr, self.bytes) }
        }
    }
}

/// Blocks smaller than this go straight back to the allocator, which reuses them well.
pub(crate) const POOL_MIN_BYTES: usize = 1 << 16;

/// The most bytes the pool keeps: `KILN_CPU_POOL_MIB` mebibytes, or 4 GiB.
pub(crate) fn pool_limit() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("KILN_CPU_POOL_MIB")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .map_or(4 << 30, |mib| mib << 20)
    })
}

/// Returns every pooled block to the allocator.
pub fn trim_pool() {
    let blocks = std::mem::take(&mut *pool().0.lock().unwrap_or_else(PoisonError::into_inner));
    for (bytes, ptr) in blocks.blocks {
        // SAFETY: pooled blocks are live allocations nothing refers to.
        unsafe { free(ptr, bytes) }
    }
}

/// # Safety
/// `ptr` must come from `zeroed(bytes)` and be used by nothing.
unsafe fn free(ptr: NonNull<u8>, bytes: usize) {
    let layout = Layout::from_size_align(bytes, HOST_ALIGN).expect("checked at alloc");
    // SAFETY: the caller's contract.
    unsafe { alloc::dealloc(ptr.as_ptr(), layout) }
}

#[derive(Default)]
struct Blocks {
    /// Oldest first.
    blocks: Vec<(usize, NonNull<u8>)>,
    bytes: usize,
}

// SAFETY: the pool owns its blocks exclusively; they are plain memory.
unsafe impl Send for Blocks {}

struct Pool(Mutex<Blocks>);

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool(Mutex::new(Blocks::default())))
}

impl Pool {
    /// A pooled block of exactly `bytes`, the most recently freed first.
    fn take(&self, bytes: usize) -> Option<NonNull<u8>> {
        if bytes < POOL_MIN_BYTES {
            return None;
        }
        let mut p = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let i = p.blocks.iter().rposition(|&(b, _)| b == bytes)?;
        p.bytes -= bytes;
        Some(p.blocks.remove(i).1)
    }

    /// Keeps a freed block, dropping the oldest ones while the pool is over its limit.
    fn put(&self, bytes: usize, ptr: NonNull<u8>) {
        let mut evicted = vec![];
        {
            let mut p = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            p.blocks.push((bytes, ptr));
            p.bytes += bytes;
            let limit = pool_limit();
            while p.bytes > limit {
                let (b, old) = p.blocks.remove(0);
                p.bytes -= b;
                evicted.push((b, old));
            }
        }
        for (b, old) in evicted {
            // SAFETY: pooled blocks are live allocations nothing refers to.
            unsafe { free(old, b) }
        }
    }
}

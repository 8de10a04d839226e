//! Host memory for CPU buffers: zero-initialised and 64-byte aligned.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

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
        let layout = Layout::from_size_align(bytes, HOST_ALIGN).map_err(|_| oom())?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc::alloc_zeroed(layout) }).ok_or_else(oom)?;
        Ok(HostMem { ptr, bytes })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Copies the contents into `dst`, which must be exactly as long.
    pub(crate) fn read_into(&self, dst: &mut [u8]) {
        assert_eq!(
            dst.len(),
            self.bytes,
            "HostMem::read_into: length checked by caller"
        );
        // SAFETY: both ranges are `bytes` long and cannot overlap (`dst` is a unique borrow).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), dst.as_mut_ptr(), self.bytes) }
    }

    /// Overwrites the contents with `src`, which must be exactly as long.
    pub(crate) fn write_from(&mut self, src: &[u8]) {
        assert_eq!(
            src.len(),
            self.bytes,
            "HostMem::write_from: length checked by caller"
        );
        // SAFETY: both ranges are `bytes` long; `&mut self` excludes any other access.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr(), self.bytes) }
    }

    /// Sets every byte to `byte`.
    pub(crate) fn fill_bytes(&mut self, byte: u8) {
        // SAFETY: the allocation is `bytes` long; `&mut self` excludes any other access.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr(), byte, self.bytes) }
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        if self.bytes != 0 {
            let layout = Layout::from_size_align(self.bytes, HOST_ALIGN).expect("checked at alloc");
            // SAFETY: allocated in `zeroed` with this very layout.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

//! CUDA storage for buffers: untyped `CudaSlice<u8>` on the device's stream. Copies and fills
//! take a device address and a length, so they serve a whole allocation and a part of one
//! alike.

use std::sync::Arc;

use cudarc::driver::{result, CudaSlice, DevicePtr};

use crate::device::blocks::{self, BlockCache};
use crate::device::cuda::CudaDevice;
pub(super) use crate::device::staging::Pending;
use crate::{Error, Result};

/// A device allocation of a buffer; dropped, it goes back to the device's block cache (or,
/// with the cache off, to the driver).
pub(super) struct DeviceMem {
    block: Option<CudaSlice<u8>>,
    cache: Option<Arc<BlockCache>>,
}

impl DeviceMem {
    fn slice(&self) -> &CudaSlice<u8> {
        self.block.as_ref().expect("present until dropped")
    }
}

impl Drop for DeviceMem {
    fn drop(&mut self) {
        if let (Some(block), Some(cache)) = (self.block.take(), &self.cache) {
            cache.put(block);
        }
    }
}

pub(super) fn zeros(device: &CudaDevice, bytes: usize) -> Result<DeviceMem> {
    let mem = uninit(device, bytes)?;
    fill_bytes(device, address(&mem), bytes, 0)?;
    Ok(mem)
}

/// At least `bytes` bytes (rounded up to the cache's granule), left as they are: no memset is
/// queued. A block freed earlier is reused when the cache holds one of the size.
pub(super) fn uninit(device: &CudaDevice, bytes: usize) -> Result<DeviceMem> {
    let rounded = bytes.max(1).next_multiple_of(blocks::GRANULE);
    if !BlockCache::enabled() {
        return Ok(DeviceMem {
            block: Some(allocate(device, rounded)?),
            cache: None,
        });
    }
    let cache = device.blocks();
    let block = match cache.take(rounded) {
        Some(block) => block,
        None => match allocate(device, rounded) {
            Err(Error::OutOfMemory { .. }) => {
                // The cache may hold what is missing: give it back and try once more.
                cache.release();
                allocate(device, rounded)?
            }
            other => other?,
        },
    };
    Ok(DeviceMem {
        block: Some(block),
        cache: Some(cache.clone()),
    })
}

/// `bytes` new bytes from the device's stream-ordered pool, left as they are.
fn allocate(device: &CudaDevice, bytes: usize) -> Result<CudaSlice<u8>> {
    // SAFETY: device memory is never read as Rust values in place: downloads copy its bytes
    // (whatever they are) into host memory the runtime has initialised, and callers of
    // `Buffer::uninit` promise that kernels write it before it is read for a result.
    let allocated = crate::profile::timed_host(
        || "allocation (driver)".into(),
        || unsafe { device.stream().alloc::<u8>(bytes) },
    );
    allocated.map_err(|e| match e.0 {
        cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => Error::OutOfMemory {
            bytes,
            device: format!("cuda:{}", device.ordinal()),
        },
        _ => Error::cuda(format!("allocating {bytes} bytes"), e),
    })
}

pub(super) fn address(mem: &DeviceMem) -> u64 {
    let slice = mem.slice();
    // Event tracking is off (see `CudaDevice::open`), so the guard records nothing.
    let (ptr, _guard) = slice.device_ptr(slice.stream());
    ptr
}

/// Uploads up to this size go through pinned staging and do not wait; larger ones (weights,
/// loaded once) are copied synchronously rather than held twice in pinned memory.
const STAGED_UPLOAD_MAX: usize = 16 << 20;

/// Binds the device's context to this thread: raw driver calls need it current (cudarc's safe
/// calls bind it themselves).
fn bind(device: &CudaDevice) -> Result<()> {
    device
        .context()
        .bind_to_thread()
        .map_err(|e| Error::cuda("binding the CUDA context", e))
}

/// Copies the `dst.len()` bytes at device address `src` into `dst` and waits for the copy.
pub(super) fn read_into(device: &CudaDevice, src: u64, dst: &mut [u8]) -> Result<()> {
    device.count_wait();
    bind(device)?;
    let stream = device.stream();
    // SAFETY: `src` addresses `dst.len()` bytes of a live allocation of this device (the
    // caller's buffer, borrowed for the call); the copy is ordered after all earlier work on
    // the stream and finished before returning, while `dst` is borrowed.
    unsafe { result::memcpy_dtoh_async(dst, src, stream.cu_stream()) }
        .and_then(|()| stream.synchronize())
        .map_err(|e| Error::cuda(format!("downloading {} bytes", dst.len()), e))
}

/// Queues a copy of the `bytes` bytes at `src` into pinned memory; [`Pending`] waits for it.
pub(super) fn read_later(device: &CudaDevice, src: u64, bytes: usize) -> Result<Pending> {
    device.downloads().download(device.stream(), src, bytes)
}

/// Copies `src` to device address `dst` (which has room for it). Small copies are staged
/// through pinned memory and return once queued; large ones wait for the copy.
pub(super) fn write_from(device: &CudaDevice, dst: u64, src: &[u8]) -> Result<()> {
    let stream = device.stream();
    if src.len() <= STAGED_UPLOAD_MAX {
        return crate::profile::timed_host(
            || "staged upload".into(),
            || device.uploads().upload(stream, dst, src),
        );
    }
    device.count_wait();
    bind(device)?;
    // SAFETY: `dst` addresses `src.len()` bytes of a live allocation the caller holds
    // exclusively. The driver only promises that an asynchronous copy from pageable memory
    // *may* return before `src` has been read: wait, so the caller may free or reuse `src`.
    unsafe { result::memcpy_htod_async(dst, src, stream.cu_stream()) }
        .and_then(|()| stream.synchronize())
        .map_err(|e| Error::cuda(format!("uploading {} bytes", src.len()), e))
}

/// Queues a copy of `bytes` bytes from device address `src` to `dst`.
pub(super) fn copy(device: &CudaDevice, dst: u64, src: u64, bytes: usize) -> Result<()> {
    bind(device)?;
    // SAFETY: both ranges are `bytes` bytes of live allocations of this device, `dst` held
    // exclusively by the caller; the copy is ordered on the stream all their other uses go to.
    unsafe { result::memcpy_dtod_async(dst, src, bytes, device.stream().cu_stream()) }
        .map_err(|e| Error::cuda(format!("copying {bytes} bytes on the device"), e))
}

/// Queues a fill of the `bytes` bytes at `dst` with `byte`.
pub(super) fn fill_bytes(device: &CudaDevice, dst: u64, bytes: usize, byte: u8) -> Result<()> {
    bind(device)?;
    // SAFETY: `dst` addresses `bytes` bytes of a live allocation the caller holds exclusively;
    // the memset is ordered on the stream every other use of it goes to.
    let stream = device.stream();
    crate::profile::timed_gpu(
        stream,
        || "memset".into(),
        || unsafe { result::memset_d8_async(dst, byte, bytes, stream.cu_stream()) },
    )
    .map_err(|e| Error::cuda(format!("filling {bytes} bytes"), e))
}

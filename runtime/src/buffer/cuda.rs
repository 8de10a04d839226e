//! CUDA storage for buffers: untyped `CudaSlice<u8>` on the device's stream.

use cudarc::driver::{CudaSlice, DevicePtr};

use crate::device::cuda::CudaDevice;
pub(super) use crate::device::staging::Pending;
use crate::{Error, Result};

pub(super) fn zeros(device: &CudaDevice, bytes: usize) -> Result<CudaSlice<u8>> {
    device
        .stream()
        .alloc_zeros::<u8>(bytes)
        .map_err(|e| match e.0 {
            cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => Error::OutOfMemory {
                bytes,
                device: format!("cuda:{}", device.ordinal()),
            },
            _ => Error::cuda(format!("allocating {bytes} bytes"), e),
        })
}

pub(super) fn address(slice: &CudaSlice<u8>) -> u64 {
    // Event tracking is off (see `CudaDevice::open`), so the guard records nothing.
    let (ptr, _guard) = slice.device_ptr(slice.stream());
    ptr
}

/// Uploads up to this size go through pinned staging and do not wait; larger ones (weights,
/// loaded once) are copied synchronously rather than held twice in pinned memory.
const STAGED_UPLOAD_MAX: usize = 16 << 20;

/// Copies `slice` into `dst` (same length) and waits for the copy.
pub(super) fn read_into(device: &CudaDevice, slice: &CudaSlice<u8>, dst: &mut [u8]) -> Result<()> {
    device.count_wait();
    let stream = device.stream();
    stream
        .memcpy_dtoh(slice, dst)
        .and_then(|()| stream.synchronize())
        .map_err(|e| Error::cuda(format!("downloading {} bytes", dst.len()), e))
}

/// Queues a copy of `slice` into pinned memory; [`Pending`] waits for it.
pub(super) fn read_later(device: &CudaDevice, slice: &CudaSlice<u8>) -> Result<Pending> {
    device
        .downloads()
        .download(device.stream(), address(slice), slice.len())
}

/// Copies `src` (same length) into `slice`. Small copies are staged through pinned memory and
/// return once queued; large ones wait for the copy.
pub(super) fn write_from(device: &CudaDevice, slice: &mut CudaSlice<u8>, src: &[u8]) -> Result<()> {
    let stream = device.stream();
    if src.len() <= STAGED_UPLOAD_MAX {
        return device.uploads().upload(stream, address(slice), src);
    }
    device.count_wait();
    // The driver only promises that an asynchronous copy from pageable memory *may* return
    // before `src` has been read: wait, so the caller may free or reuse `src` at once.
    stream
        .memcpy_htod(src, slice)
        .and_then(|()| stream.synchronize())
        .map_err(|e| Error::cuda(format!("uploading {} bytes", src.len()), e))
}

pub(super) fn fill_bytes(device: &CudaDevice, slice: &mut CudaSlice<u8>, byte: u8) -> Result<()> {
    let stream = device.stream();
    let bytes = slice.len();
    let ptr = address(slice);
    // The raw driver call below needs the context current on this thread; cudarc's safe
    // calls bind it themselves.
    device
        .context()
        .bind_to_thread()
        .map_err(|e| Error::cuda("binding the CUDA context", e))?;
    // SAFETY: `ptr` addresses `bytes` bytes owned by `slice`, which outlives the call; the memset
    // is ordered on the stream every other use of `slice` goes to.
    unsafe { cudarc::driver::result::memset_d8_async(ptr, byte, bytes, stream.cu_stream()) }
        .map_err(|e| Error::cuda(format!("filling {bytes} bytes"), e))
}

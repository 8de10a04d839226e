//! Typed device allocations.

#[cfg(feature = "cuda")]
mod cuda;
mod host;
mod view;

use std::fmt;

use kiln_compiler::DType;

use crate::device::{Device, Inner};
use crate::element::{as_bytes, as_bytes_mut, Element};
use crate::{Error, Result};

pub use host::trim_pool as trim_host_pool;
use host::HostMem;
pub(crate) use host::HOST_ALIGN;
pub use view::{BufferView, BufferViewMut};

/// `len` elements of one [`DType`] on one [`Device`].
///
/// A kernel reads a buffer borrowed shared ([`Buffer::view`], `&buffer`) and writes one borrowed
/// exclusively ([`Buffer::view_mut`], `&mut buffer`), so while a launch's arguments live no other
/// code can read or write what it writes. On the CPU launches are synchronous; on a GPU all work
/// of a device is ordered on its one stream, so a download or write after a launch sees it
/// finished.
pub struct Buffer {
    device: Device,
    dtype: DType,
    len: usize,
    storage: Storage,
}

enum Storage {
    Host(HostMem),
    #[cfg(feature = "cuda")]
    Cuda(cudarc::driver::CudaSlice<u8>),
}

impl Buffer {
    pub(crate) fn zeros(device: &Device, dtype: DType, len: usize) -> Result<Buffer> {
        let bytes = len
            .checked_mul(dtype.size_bytes())
            .ok_or_else(|| Error::OutOfMemory {
                bytes: usize::MAX,
                device: device.to_string(),
            })?;
        let storage = match device.inner() {
            Inner::Cpu { .. } => Storage::Host(HostMem::zeroed(bytes)?),
            #[cfg(feature = "cuda")]
            Inner::Cuda(d) => Storage::Cuda(cuda::zeros(d, bytes)?),
        };
        Ok(Buffer {
            device: device.clone(),
            dtype,
            len,
            storage,
        })
    }

    pub(crate) fn from_slice<T: Element>(device: &Device, data: &[T]) -> Result<Buffer> {
        let mut buffer = Buffer::zeros(device, T::DTYPE, data.len())?;
        buffer.write(data)?;
        Ok(buffer)
    }

    /// The device the buffer lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Its element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Its length in elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its size in bytes.
    pub fn size_bytes(&self) -> usize {
        self.len * self.dtype.size_bytes()
    }

    /// The address of the first element, as kernels receive it (host or device address).
    pub fn address(&self) -> u64 {
        match &self.storage {
            Storage::Host(mem) => mem.as_ptr() as u64,
            #[cfg(feature = "cuda")]
            Storage::Cuda(slice) => cuda::address(slice),
        }
    }

    /// Copies the contents to the host. Fails unless `T` is the buffer's element type.
    pub fn download<T: Element>(&self) -> Result<Vec<T>> {
        self.check_dtype::<T>()?;
        // Zero-initialised, so the vector is valid before the copy overwrites it.
        let mut out = vec![zeroed::<T>(); self.len];
        let bytes = as_bytes_mut(&mut out);
        match &self.storage {
            Storage::Host(mem) => mem.read_into(bytes),
            #[cfg(feature = "cuda")]
            Storage::Cuda(slice) => cuda::read_into(self.cuda_device()?, slice, bytes)?,
        }
        Ok(out)
    }

    /// Queues a copy of the contents to the host without waiting for it (on a GPU, into pinned
    /// memory, ordered after the work queued so far); [`PendingRead::wait`] returns them. This is
    /// how a training step's metrics are read a step later, so the host never stalls the GPU.
    /// On the CPU the values are read at once.
    pub fn read_later<T: Element>(&self) -> Result<PendingRead<T>> {
        self.check_dtype::<T>()?;
        let state = match &self.storage {
            Storage::Host(_) => Pending::Ready(self.download()?),
            #[cfg(feature = "cuda")]
            Storage::Cuda(slice) => Pending::Cuda(
                cuda::read_later(self.cuda_device()?, slice)?,
                self.device.clone(),
            ),
        };
        Ok(PendingRead {
            len: self.len,
            state,
        })
    }

    /// Overwrites the contents with `data`, which must have the buffer's element type and length.
    pub fn write<T: Element>(&mut self, data: &[T]) -> Result<()> {
        self.check_dtype::<T>()?;
        if data.len() != self.len {
            return Err(Error::LengthMismatch {
                buffer: self.len,
                host: data.len(),
            });
        }
        let bytes = as_bytes(data);
        match &mut self.storage {
            Storage::Host(mem) => mem.write_from(bytes),
            #[cfg(feature = "cuda")]
            Storage::Cuda(slice) => cuda::write_from(device_of(&self.device)?, slice, bytes)?,
        }
        Ok(())
    }

    /// Sets every element to `value`, which must have the buffer's element type.
    pub fn fill<T: Element>(&mut self, value: T) -> Result<()> {
        self.check_dtype::<T>()?;
        let data = vec![value; self.len];
        self.write(&data)
    }

    /// Sets every byte to `0xFF`: NaN for floats, -1 for integers. Tests poison outputs so an
    /// element a kernel failed to write cannot pass for a correct one.
    pub fn poison(&mut self) -> Result<()> {
        self.fill_bytes(0xFF)
    }

    /// Sets every element to zero, on the device (a memset queued on its stream on a GPU).
    pub fn zero(&mut self) -> Result<()> {
        self.fill_bytes(0)
    }

    fn fill_bytes(&mut self, byte: u8) -> Result<()> {
        match &mut self.storage {
            Storage::Host(mem) => mem.fill_bytes(byte),
            #[cfg(feature = "cuda")]
            Storage::Cuda(slice) => cuda::fill_bytes(device_of(&self.device)?, slice, byte)?,
        }
        Ok(())
    }

    /// The buffer's bytes, whatever its element type (waits for the device).
    pub(crate) fn read_bytes(&self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.size_bytes()];
        match &self.storage {
            Storage::Host(mem) => mem.read_into(&mut out),
            #[cfg(feature = "cuda")]
            Storage::Cuda(slice) => cuda::read_into(self.cuda_device()?, slice, &mut out)?,
        }
        Ok(out)
    }

    /// Overwrites the buffer's bytes (exactly [`Buffer::size_bytes`] of them).
    pub(crate) fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() != self.size_bytes() {
            return Err(Error::LengthMismatch {
                buffer: self.size_bytes(),
                host: bytes.len(),
            });
        }
        match &mut self.storage {
            Storage::Host(mem) => mem.write_from(bytes),
            #[cfg(feature = "cuda")]
            Storage::Cuda(slice) => cuda::write_from(device_of(&self.device)?, slice, bytes)?,
        }
        Ok(())
    }

    fn check_dtype<T: Element>(&self) -> Result<()> {
        if T::DTYPE != self.dtype {
            return Err(Error::DTypeMismatch {
                actual: self.dtype,
                requested: T::DTYPE,
            });
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_device(&self) -> Result<&crate::device::cuda::CudaDevice> {
        device_of(&self.device)
    }
}

#[cfg(feature = "cuda")]
fn device_of(device: &Device) -> Result<&crate::device::cuda::CudaDevice> {
    match device.inner() {
        Inner::Cuda(d) => Ok(d),
        Inner::Cpu { .. } => Err(Error::Unsupported(
            "a CUDA buffer on a CPU device (internal error)".into(),
        )),
    }
}

/// A download queued by [`Buffer::read_later`].
pub struct PendingRead<T: Element> {
    len: usize,
    state: Pending<T>,
}

enum Pending<T> {
    Ready(Vec<T>),
    #[cfg(feature = "cuda")]
    Cuda(cuda::Pending, Device),
}

impl<T: Element> PendingRead<T> {
    /// Whether [`PendingRead::wait`] would return without blocking.
    pub fn is_ready(&self) -> bool {
        match &self.state {
            Pending::Ready(_) => true,
            #[cfg(feature = "cuda")]
            Pending::Cuda(p, _) => p.is_ready(),
        }
    }

    /// The values, waiting for the copy if it has not finished (counted in
    /// [`Device::host_waits`] then).
    pub fn wait(self) -> Result<Vec<T>> {
        match self.state {
            Pending::Ready(values) => Ok(values),
            #[cfg(feature = "cuda")]
            Pending::Cuda(pending, device) => {
                if !pending.is_ready() {
                    device_of(&device)?.count_wait();
                }
                let mut out = vec![zeroed::<T>(); self.len];
                pending.wait_into(as_bytes_mut(&mut out))?;
                Ok(out)
            }
        }
    }
}

/// The all-zero value of an element type.
fn zeroed<T: Element>() -> T {
    // SAFETY: every bit pattern, zero included, is a valid `T` (sealed `Element`).
    unsafe { std::mem::zeroed() }
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Buffer({} x {} on {})",
            self.len, self.dtype, self.device
        )
    }
}

const _: () = assert!(HOST_ALIGN >= 16);

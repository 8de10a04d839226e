//! Typed device allocations.

#[cfg(feature = "cuda")]
mod cuda;
mod host;
mod parts;
mod view;

use std::fmt;
use std::sync::Arc;

use kiln_compiler::DType;

use crate::device::{Device, Inner};
use crate::element::{as_bytes, as_bytes_mut, Element};
use crate::{Error, Result};

pub use host::trim_pool as trim_host_pool;
use host::HostMem;
pub(crate) use host::HOST_ALIGN;
pub use parts::{Span, SpanMut};
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
    Cuda(cuda::DeviceMem),
    /// Bytes from `offset` of an allocation shared by the consecutive parts
    /// [`Device::alloc_parts`] made; each part starts at a multiple of `align` bytes.
    Part {
        whole: Arc<Storage>,
        offset: usize,
        align: usize,
    },
}

impl Storage {
    /// The address of the first byte (host or device address).
    fn address(&self) -> u64 {
        match self {
            Storage::Host(mem) => mem.as_ptr() as u64,
            #[cfg(feature = "cuda")]
            Storage::Cuda(slice) => cuda::address(slice),
            Storage::Part { whole, offset, .. } => whole.address() + *offset as u64,
        }
    }
}

impl Buffer {
    pub(crate) fn zeros(device: &Device, dtype: DType, len: usize) -> Result<Buffer> {
        Buffer::allocate(device, dtype, len, true)
    }

    /// A buffer whose contents are unspecified, for an output that a kernel or GEMM writes
    /// in full before anything reads it: on a GPU no memset is queued (a training step
    /// allocates gigabytes of activations, and clearing them cost ~10% of its time); on the
    /// CPU a pooled block is handed out without its clear. Debug builds and
    /// `KILN_POISON_UNINIT=1` fill it with `0xFF` (NaN) instead, so an element a kernel
    /// failed to write cannot pass for a correct one in tests.
    pub(crate) fn uninit(device: &Device, dtype: DType, len: usize) -> Result<Buffer> {
        let mut buffer = Buffer::allocate(device, dtype, len, false)?;
        if poison_uninit() {
            buffer.poison()?;
        }
        Ok(buffer)
    }

    /// `len` elements of `dtype` on `device`, zero-filled or as the allocator left them.
    fn allocate(device: &Device, dtype: DType, len: usize, zeroed: bool) -> Result<Buffer> {
        let bytes = len
            .checked_mul(dtype.size_bytes())
            .ok_or_else(|| Error::OutOfMemory {
                bytes: usize::MAX,
                device: device.to_string(),
            })?;
        let storage = match (device.inner(), zeroed) {
            (Inner::Cpu { .. }, true) => Storage::Host(HostMem::zeroed(bytes)?),
            (Inner::Cpu { .. }, false) => Storage::Host(HostMem::reused(bytes)?),
            #[cfg(feature = "cuda")]
            (Inner::Cuda(d), true) => Storage::Cuda(cuda::zeros(d, bytes)?),
            #[cfg(feature = "cuda")]
            (Inner::Cuda(d), false) => Storage::Cuda(cuda::uninit(d, bytes)?),
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
        self.storage.address()
    }

    /// The host address of the first byte; `None` for device memory.
    pub(crate) fn host_base(&self) -> Option<*mut u8> {
        (!self.device.is_gpu()).then(|| self.address() as *mut u8)
    }

    /// Copies the contents to the host. Fails unless `T` is the buffer's element type.
    pub fn download<T: Element>(&self) -> Result<Vec<T>> {
        self.check_dtype::<T>()?;
        // Zero-initialised, so the vector is valid before the copy overwrites it.
        let mut out = vec![zeroed::<T>(); self.len];
        self.read_raw(as_bytes_mut(&mut out))?;
        Ok(out)
    }

    /// Queues a copy of the contents to the host without waiting for it (on a GPU, into pinned
    /// memory, ordered after the work queued so far); [`PendingRead::wait`] returns them. This is
    /// how a training step's metrics are read a step later, so the host never stalls the GPU.
    /// On the CPU the values are read at once.
    pub fn read_later<T: Element>(&self) -> Result<PendingRead<T>> {
        self.check_dtype::<T>()?;
        let state = match self.host_base() {
            Some(_) => Pending::Ready(self.download()?),
            #[cfg(feature = "cuda")]
            None => Pending::Cuda(
                cuda::read_later(self.cuda_device()?, self.address(), self.size_bytes())?,
                self.device.clone(),
                self.len,
            ),
            #[cfg(not(feature = "cuda"))]
            None => unreachable!("device memory without the cuda feature"),
        };
        Ok(PendingRead { state })
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
        self.write_raw(as_bytes(data))
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
        let bytes = self.size_bytes();
        match self.host_base() {
            // SAFETY: the buffer's `bytes` bytes, borrowed exclusively.
            Some(ptr) => unsafe { std::ptr::write_bytes(ptr, byte, bytes) },
            #[cfg(feature = "cuda")]
            None => cuda::fill_bytes(self.cuda_device()?, self.address(), bytes, byte)?,
            #[cfg(not(feature = "cuda"))]
            None => unreachable!("device memory without the cuda feature"),
        }
        Ok(())
    }

    /// Copies the buffer's bytes into `dst`, exactly [`Buffer::size_bytes`] long (waits for
    /// the device).
    fn read_raw(&self, dst: &mut [u8]) -> Result<()> {
        debug_assert_eq!(dst.len(), self.size_bytes());
        match self.host_base() {
            // SAFETY: the buffer's bytes and `dst` are as long and cannot overlap (`dst` is a
            // unique borrow); nothing writes the buffer while it is borrowed shared.
            Some(ptr) => unsafe { std::ptr::copy_nonoverlapping(ptr, dst.as_mut_ptr(), dst.len()) },
            #[cfg(feature = "cuda")]
            None => cuda::read_into(self.cuda_device()?, self.address(), dst)?,
            #[cfg(not(feature = "cuda"))]
            None => unreachable!("device memory without the cuda feature"),
        }
        Ok(())
    }

    /// Overwrites the buffer's bytes with `src`, exactly [`Buffer::size_bytes`] long.
    fn write_raw(&mut self, src: &[u8]) -> Result<()> {
        debug_assert_eq!(src.len(), self.size_bytes());
        match self.host_base() {
            // SAFETY: as long as the buffer, which is borrowed exclusively.
            Some(ptr) => unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), ptr, src.len()) },
            #[cfg(feature = "cuda")]
            None => cuda::write_from(self.cuda_device()?, self.address(), src)?,
            #[cfg(not(feature = "cuda"))]
            None => unreachable!("device memory without the cuda feature"),
        }
        Ok(())
    }

    /// Overwrites the contents with `src`'s, which must have the same element type and length
    /// and live on the same device (queued on the device's stream on a GPU).
    pub fn copy_from(&mut self, src: &Buffer) -> Result<()> {
        if src.dtype != self.dtype {
            return Err(Error::DTypeMismatch {
                actual: self.dtype,
                requested: src.dtype,
            });
        }
        if src.len != self.len {
            return Err(Error::LengthMismatch {
                buffer: self.len,
                host: src.len,
            });
        }
        if !src.device.same_device(&self.device) {
            return Err(Error::Unsupported(format!(
                "copying a buffer of {} into one of {}",
                src.device, self.device
            )));
        }
        let bytes = self.size_bytes();
        match (self.host_base(), src.host_base()) {
            // SAFETY: distinct buffers (`self` is borrowed exclusively, `src` shared), each
            // `bytes` long.
            (Some(dst), Some(from)) => unsafe { std::ptr::copy_nonoverlapping(from, dst, bytes) },
            #[cfg(feature = "cuda")]
            _ => cuda::copy(self.cuda_device()?, self.address(), src.address(), bytes)?,
            #[cfg(not(feature = "cuda"))]
            _ => unreachable!("device memory without the cuda feature"),
        }
        Ok(())
    }

    /// The buffer's bytes, whatever its element type (waits for the device).
    pub(crate) fn read_bytes(&self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.size_bytes()];
        self.read_raw(&mut out)?;
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
        self.write_raw(bytes)
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
    state: Pending<T>,
}

enum Pending<T> {
    Ready(Vec<T>),
    /// A copy in flight, of this many elements.
    #[cfg(feature = "cuda")]
    Cuda(cuda::Pending, Device, usize),
}

impl<T: Element> PendingRead<T> {
    /// Whether [`PendingRead::wait`] would return without blocking.
    pub fn is_ready(&self) -> bool {
        match &self.state {
            Pending::Ready(_) => true,
            #[cfg(feature = "cuda")]
            Pending::Cuda(p, _, _) => p.is_ready(),
        }
    }

    /// The values, waiting for the copy if it has not finished (counted in
    /// [`Device::host_waits`] then).
    pub fn wait(self) -> Result<Vec<T>> {
        match self.state {
            Pending::Ready(values) => Ok(values),
            #[cfg(feature = "cuda")]
            Pending::Cuda(pending, device, len) => {
                if !pending.is_ready() {
                    device_of(&device)?.count_wait();
                }
                let mut out = vec![zeroed::<T>(); len];
                pending.wait_into(as_bytes_mut(&mut out))?;
                Ok(out)
            }
        }
    }
}

/// Whether [`Buffer::uninit`] poisons what it hands out: in debug builds, and where
/// `KILN_POISON_UNINIT=1` (read once).
fn poison_uninit() -> bool {
    static POISON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *POISON.get_or_init(|| {
        cfg!(debug_assertions) || std::env::var("KILN_POISON_UNINIT").is_ok_and(|v| v == "1")
    })
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

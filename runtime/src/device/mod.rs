//! Devices: the CPU and CUDA GPUs.

#[cfg(feature = "cuda")]
pub(crate) mod blocks;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
#[cfg(feature = "cuda")]
pub(crate) mod staging;

use std::fmt;
use std::sync::Arc;

use kiln_compiler::DType;

use crate::buffer::Buffer;
use crate::element::Element;
use crate::event::Event;
use crate::Result;

/// What kind of device a [`Device`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// Host memory; kernels compiled by Cranelift, programs run on a thread pool.
    Cpu,
    /// A CUDA GPU; kernels compiled to PTX.
    Cuda,
}

/// A device that holds buffers and runs kernels. Cheap to clone: clones share one device.
#[derive(Clone)]
pub struct Device {
    inner: Arc<Inner>,
}

pub(crate) enum Inner {
    Cpu {
        name: String,
    },
    #[cfg(feature = "cuda")]
    Cuda(cuda::CudaDevice),
}

impl Device {
    /// The host CPU.
    pub fn cpu() -> Device {
        let threads = rayon::current_num_threads();
        let name = format!("cpu ({}, {threads} threads)", std::env::consts::ARCH);
        Device {
            inner: Arc::new(Inner::Cpu { name }),
        }
    }

    /// The number of CUDA devices the driver reports, without opening any, or why there is no
    /// usable driver ([`crate::Error::NoCudaDevice`]).
    pub fn cuda_count() -> Result<usize> {
        #[cfg(feature = "cuda")]
        {
            cuda::device_count().map_err(|reason| crate::Error::NoCudaDevice { reason })
        }
        #[cfg(not(feature = "cuda"))]
        {
            Err(crate::Error::NoCudaDevice {
                reason: "kiln-runtime was built without its `cuda` feature".into(),
            })
        }
    }

    /// CUDA device `ordinal`. Fails with [`crate::Error::NoCudaDevice`], saying why, when the
    /// driver library is missing, no such device exists, or this build has no CUDA support.
    ///
    /// Every call for one ordinal returns the same device (one context and one stream per GPU
    /// and process), so work queued through any of them is ordered.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        #[cfg(feature = "cuda")]
        {
            use std::collections::HashMap;
            use std::sync::{Mutex, PoisonError};
            static OPENED: Mutex<Option<HashMap<usize, Device>>> = Mutex::new(None);
            let mut opened = OPENED.lock().unwrap_or_else(PoisonError::into_inner);
            let opened = opened.get_or_insert_with(HashMap::new);
            if let Some(device) = opened.get(&ordinal) {
                return Ok(device.clone());
            }
            let device = Device {
                inner: Arc::new(Inner::Cuda(cuda::CudaDevice::open(ordinal)?)),
            };
            opened.insert(ordinal, device.clone());
            Ok(device)
        }
        #[cfg(not(feature = "cuda"))]
        {
            Err(crate::Error::NoCudaDevice {
                reason: format!(
                    "device {ordinal} requested, but kiln-runtime was built without its `cuda` feature"
                ),
            })
        }
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// CPU or CUDA.
    pub fn kind(&self) -> DeviceKind {
        match &*self.inner {
            Inner::Cpu { .. } => DeviceKind::Cpu,
            #[cfg(feature = "cuda")]
            Inner::Cuda(_) => DeviceKind::Cuda,
        }
    }

    /// Whether this is a GPU.
    pub fn is_gpu(&self) -> bool {
        self.kind() == DeviceKind::Cuda
    }

    /// A human-readable name: the GPU's marketing name, or the CPU's architecture.
    pub fn name(&self) -> &str {
        match &*self.inner {
            Inner::Cpu { name } => name,
            #[cfg(feature = "cuda")]
            Inner::Cuda(d) => d.name(),
        }
    }

    /// The CUDA ordinal, for a GPU.
    pub fn ordinal(&self) -> Option<usize> {
        match &*self.inner {
            Inner::Cpu { .. } => None,
            #[cfg(feature = "cuda")]
            Inner::Cuda(d) => Some(d.ordinal()),
        }
    }

    /// `(free, total)` bytes of a GPU's memory; `None` on the CPU (the host's memory is the
    /// operating system's to say).
    pub fn memory(&self) -> Result<Option<(usize, usize)>> {
        match &*self.inner {
            Inner::Cpu { .. } => Ok(None),
            #[cfg(feature = "cuda")]
            Inner::Cuda(d) => d.memory().map(Some),
        }
    }

    /// The compute capability `(major, minor)`, for a GPU.
    pub fn compute_capability(&self) -> Option<(u32, u32)> {
        match &*self.inner {
            Inner::Cpu { .. } => None,
            #[cfg(feature = "cuda")]
            Inner::Cuda(d) => Some(d.compute_capability()),
        }
    }

    /// The PTX target kernels are compiled for on this GPU; `None` on the CPU and on GPUs older
    /// than the oldest supported target (sm_80).
    #[cfg(feature = "cuda")]
    pub fn arch(&self) -> Option<kiln_compiler::backend::nvptx::Arch> {
        let (major, minor) = self.compute_capability()?;
        kiln_compiler::backend::nvptx::Arch::from_compute_capability(major, minor)
    }

    /// Whether `self` and `other` are the same device (the CPU, or the same GPU ordinal).
    pub fn same_device(&self, other: &Device) -> bool {
        self.kind() == other.kind() && self.ordinal() == other.ordinal()
    }

    /// A zero-filled buffer of `len` elements of `dtype`.
    pub fn alloc(&self, dtype: DType, len: usize) -> Result<Buffer> {
        Buffer::zeros(self, dtype, len)
    }

    /// A buffer of `len` elements of `dtype` whose contents are unspecified, for an output a
    /// kernel or GEMM writes in full before it is read: no zero-fill is queued. Debug builds
    /// and `KILN_POISON_UNINIT=1` fill it with `0xFF` bytes (NaN) instead, so tests catch an
    /// output that is not written in full.
    pub fn alloc_uninit(&self, dtype: DType, len: usize) -> Result<Buffer> {
        Buffer::uninit(self, dtype, len)
    }

    /// A buffer holding a copy of `data`.
    pub fn upload<T: Element>(&self, data: &[T]) -> Result<Buffer> {
        Buffer::from_slice(self, data)
    }

    /// Waits until all work queued on this device has finished. A no-op on the CPU, where
    /// launches are synchronous.
    pub fn synchronize(&self) -> Result<()> {
        match &*self.inner {
            Inner::Cpu { .. } => Ok(()),
            #[cfg(feature = "cuda")]
            Inner::Cuda(d) => d.synchronize(),
        }
    }

    /// How many times the host has blocked until this device's queued work finished: every
    /// [`Device::synchronize`], [`Buffer::download`], upload too large to stage, timing of
    /// [`Event`]s, and [`crate::PendingRead::wait`] that found its copy unfinished. Always 0 on
    /// the CPU, where there is no queue. A training step that keeps the GPU busy adds none.
    pub fn host_waits(&self) -> u64 {
        match &*self.inner {
            Inner::Cpu { .. } => 0,
            #[cfg(feature = "cuda")]
            Inner::Cuda(d) => d.host_waits(),
        }
    }

    /// The most bytes of device memory this runtime's buffers (and cuBLASLt's workspace) held
    /// at once since the device was opened or the last reset (`reset`: start a new mark).
    /// `None` on the CPU.
    pub fn peak_memory_bytes(&self, reset: bool) -> Result<Option<u64>> {
        match &*self.inner {
            Inner::Cpu { .. } => {
                let _ = reset;
                Ok(None)
            }
            #[cfg(feature = "cuda")]
            Inner::Cuda(d) => d.pool_high_water(reset).map(Some),
        }
    }

    /// Records an event after all work queued so far; two events time the work between them.
    pub fn record_event(&self) -> Result<Event> {
        Event::record(self)
    }
}

impl PartialEq for Device {
    fn eq(&self, other: &Device) -> bool {
        self.same_device(other)
    }
}

impl Eq for Device {}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ordinal() {
            Some(i) => write!(f, "Device(cuda:{i}, {})", self.name()),
            None => write!(f, "Device(cpu)"),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ordinal() {
            Some(i) => write!(f, "cuda:{i}"),
            None => f.write_str("cpu"),
        }
    }
}

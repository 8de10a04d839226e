//! A kernel loaded on a device, ready to launch.

use kiln_compiler::backend::cranelift::CpuKernel;
use kiln_compiler::ir::Param;

use crate::device::{Device, Inner};
use crate::launch::{self, Arg};
#[cfg(feature = "cuda")]
use crate::Error;
use crate::Result;

/// A compiled kernel loaded on one device. Obtained from a [`crate::KernelCache`].
pub struct Kernel {
    name: String,
    params: Vec<Param>,
    device: Device,
    code: Code,
}

enum Code {
    Cpu(Box<CpuKernel>),
    #[cfg(feature = "cuda")]
    Cuda(launch::cuda::CudaCode),
}

impl Kernel {
    pub(crate) fn from_cpu(device: &Device, code: CpuKernel) -> Kernel {
        Kernel {
            name: code.name().to_string(),
            params: code.params().to_vec(),
            device: device.clone(),
            code: Code::Cpu(Box::new(code)),
        }
    }

    /// Loads a PTX artefact (from [`crate::KernelCache::ptx_artifact`], or written by hand) on
    /// a GPU.
    #[cfg(feature = "cuda")]
    pub fn from_ptx(device: &Device, artifact: &crate::cache::PtxArtifact) -> Result<Kernel> {
        let Inner::Cuda(cuda) = device.inner() else {
            return Err(Error::Unsupported(format!("loading PTX on {device}")));
        };
        Ok(Kernel {
            name: artifact.kernel.clone(),
            params: artifact.params.clone(),
            device: device.clone(),
            code: Code::Cuda(launch::cuda::CudaCode::load(cuda, artifact)?),
        })
    }

    /// The kernel's name in its source.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its run-time parameters, in order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The device it is loaded on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs one program per point of `grid` (`[x, y, z]` program counts) with `args`, after
    /// checking them against [`Kernel::params`]. On the CPU this returns when every program has
    /// run; on a GPU it queues the launch on the device's stream.
    ///
    /// Indexing inside buffers is the kernel's business: as on a GPU, a kernel that reads or
    /// writes past the end of a buffer (for example because a size argument is wrong) is not
    /// caught.
    pub fn launch(&self, grid: [u32; 3], args: &[Arg<'_>]) -> Result<()> {
        launch::check_args(&self.name, &self.params, &self.device, args)?;
        if grid.contains(&0) {
            return Ok(());
        }
        let packed = launch::pack(args);
        match (&self.code, self.device.inner()) {
            // SAFETY: `args` were checked against the parameters and packed; they borrow the
            // buffers, which therefore outlive the synchronous CPU run.
            (Code::Cpu(code), Inner::Cpu { .. }) => unsafe {
                launch::cpu::run(code.as_ref(), grid, &packed)
            },
            #[cfg(feature = "cuda")]
            (Code::Cuda(code), Inner::Cuda(cuda)) => {
                // SAFETY: as above. A buffer dropped before the kernel finishes is freed in
                // stream order (`cuMemFreeAsync` on the same stream), after the kernel.
                unsafe { code.launch(&self.name, cuda, grid, &packed)? }
            }
            #[cfg(feature = "cuda")]
            _ => {
                return Err(Error::Unsupported(format!(
                    "kernel `{}` code/device mismatch",
                    self.name
                )))
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("name", &self.name)
            .field("device", &self.device)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

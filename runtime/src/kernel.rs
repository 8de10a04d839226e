//! A kernel loaded on a device, ready to launch.

use kiln_compiler::backend::cranelift::CpuKernel;
use kiln_compiler::ir::Param;

use crate::cache::Specialization;
use crate::device::{Device, Inner};
use crate::launch::{self, Args, Bound};
use crate::{Error, Result};

/// A compiled kernel loaded on one device. Obtained from a [`crate::KernelCache`].
pub struct Kernel {
    name: String,
    params: Vec<Param>,
    device: Device,
    /// What the code assumes of its arguments; every launch is checked against it.
    specialization: Specialization,
    /// Whether the code checks its accesses against the bounds of its buffers.
    checked: bool,
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
            specialization: Specialization::NONE,
            checked: code.options().bounds_checks,
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
            specialization: Specialization {
                divisible_by_16: artifact.divisible_by_16,
            },
            checked: artifact.bounds_checks,
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

    /// What the code assumes of its arguments (16-byte alignment, divisibility by 16).
    pub fn specialization(&self) -> Specialization {
        self.specialization
    }

    /// Whether the code checks every access against the bounds of its buffers.
    pub fn is_checked(&self) -> bool {
        self.checked
    }

    /// Runs one program per point of `grid` (`[x, y, z]` program counts) with `args`, bound to
    /// [`Kernel::params`] by name and checked first (see [`Args`]); arguments that break the
    /// kernel's [`Kernel::specialization`] are refused. On the CPU this returns when every
    /// program has run; on a GPU it queues the launch on the device's stream.
    ///
    /// On the CPU every access is checked against the buffer (or view) its pointer came from:
    /// a load, store or atomic outside it is skipped and the launch returns
    /// [`Error::OutOfBounds`] naming the program, the parameter and the offset (the kernel's
    /// outputs may then be partly written). On a GPU the default launch trusts the kernel's
    /// masks, as CUDA does; kernels compiled with bounds checks
    /// ([`crate::KernelSpec::with_bounds_checks`], or a cache made
    /// [`crate::KernelCache::with_gpu_bounds_checks`]) report the same error, after waiting for
    /// the kernel to finish. A CPU kernel compiled without checks ([`crate::BoundsChecks::Off`])
    /// is refused: it runs only through [`Kernel::launch_unchecked`].
    pub fn launch(&self, grid: [u32; 3], args: &Args<'_>) -> Result<()> {
        if !self.checked && !self.device.is_gpu() {
            return Err(Error::launch(
                &self.name,
                "compiled without bounds checks (BoundsChecks::Off): launch it with the unsafe \
                 `Kernel::launch_unchecked`",
            ));
        }
        // SAFETY: a CPU kernel is checked (above); a GPU launch trusts the kernel's masks, as
        // documented.
        unsafe { self.launch_unchecked(grid, args) }
    }

    /// [`Kernel::launch`] without refusing unchecked CPU kernels.
    ///
    /// # Safety
    /// If the kernel was compiled without bounds checks, every access it makes with these
    /// arguments and this grid must stay inside the buffer (or view) its pointer came from.
    pub unsafe fn launch_unchecked(&self, grid: [u32; 3], args: &Args<'_>) -> Result<()> {
        let bound = crate::profile::timed_host(
            || "binding kernel arguments".into(),
            || args.bind(&self.name, &self.params, &self.device),
        )?;
        if !bound.satisfies(&self.specialization) {
            return Err(Error::launch(
                &self.name,
                format!(
                    "the kernel was compiled for arguments specialised as {:#x} (16-byte \
                     aligned pointers, integers divisible by 16), which these arguments are not",
                    self.specialization.divisible_by_16
                ),
            ));
        }
        if grid.contains(&0) {
            return Ok(());
        }
        let fault = match (&self.code, self.device.inner()) {
            // SAFETY: `bound` was checked against the parameters; it comes from `args`, which
            // borrow the buffers, so they outlive the synchronous CPU run; and either the kernel
            // is compiled with bounds checks, so no access leaves the bound buffers, or the
            // caller vouches that none does.
            (Code::Cpu(code), Inner::Cpu { .. }) => {
                crate::profile::timed(
                    || self.name.clone(),
                    // SAFETY: as above.
                    || unsafe {
                        launch::cpu::run(code.as_ref(), grid, &bound.words, &bound.bounds)
                    },
                )?
                .map(|f| {
                    (
                        f.program,
                        f.fault.param,
                        f.fault.byte_offset,
                        f.fault.kind.describe(),
                    )
                })
            }
            #[cfg(feature = "cuda")]
            (Code::Cuda(code), Inner::Cuda(cuda)) => {
                // SAFETY: as above. A buffer dropped before the kernel finishes is freed in
                // stream order (`cuMemFreeAsync` on the same stream), after the kernel.
                crate::profile::timed_gpu(
                    cuda.stream(),
                    || self.name.clone(),
                    // SAFETY: as above.
                    || unsafe { code.launch(&self.name, cuda, grid, &bound) },
                )?
            }
            #[cfg(feature = "cuda")]
            _ => {
                return Err(Error::Unsupported(format!(
                    "kernel `{}` code/device mismatch",
                    self.name
                )))
            }
        };
        match fault {
            None => Ok(()),
            Some((program, param, byte_offset, access)) => {
                Err(self.out_of_bounds(&bound, program, param, byte_offset, access))
            }
        }
    }

    fn out_of_bounds(
        &self,
        bound: &Bound,
        program: [u32; 3],
        param: usize,
        byte_offset: i64,
        access: &'static str,
    ) -> Error {
        let p = &self.params[param];
        let size = match p.kind {
            kiln_compiler::ir::ParamKind::Ptr { pointee, .. } => pointee.size_bytes() as i64,
            kiln_compiler::ir::ParamKind::Scalar(_) => 1,
        };
        Error::OutOfBounds {
            kernel: self.name.clone(),
            program,
            access,
            param: p.name.clone(),
            offset: byte_offset.div_euclid(size),
            len: bound.bounds[param] / size as u64,
        }
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

//! Loading PTX into a CUDA context and launching it on the device's stream.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;

use crate::cache::PtxArtifact;
use crate::device::cuda::CudaDevice;
use crate::{Error, Result};

/// The most threads a block may have on every supported GPU.
const MAX_THREADS_PER_BLOCK: u32 = 1024;
/// Grid limits of compute capability 3.0 and newer.
const MAX_GRID: [u32; 3] = [i32::MAX as u32, 65535, 65535];

// Scalars are pushed as the low bytes of their packed `u64`: only right on little-endian hosts.
const _: () = assert!(cfg!(target_endian = "little"));

/// A loaded PTX kernel.
pub(crate) struct CudaCode {
    function: CudaFunction,
    threads_per_block: u32,
    // Keeps the module loaded as long as the function may be launched.
    _module: Arc<CudaModule>,
}

impl CudaCode {
    /// Loads `artifact` into `device`'s context.
    pub(crate) fn load(device: &CudaDevice, artifact: &PtxArtifact) -> Result<CudaCode> {
        let kernel = &artifact.kernel;
        let refuse = |why: String| Error::launch(kernel, why);
        if artifact.ptx.contains('\0') || artifact.entry.contains('\0') {
            return Err(refuse(
                "the PTX or its entry name contains a NUL byte".into(),
            ));
        }
        if !(1..=MAX_THREADS_PER_BLOCK).contains(&artifact.threads_per_block) {
            return Err(refuse(format!(
                "{} threads per block; a block may have 1 to {MAX_THREADS_PER_BLOCK}",
                artifact.threads_per_block
            )));
        }
        let module = device
            .context()
            .load_module(Ptx::from_src(artifact.ptx.clone()))
            .map_err(|e| Error::cuda(format!("loading the PTX of kernel `{kernel}`"), e))?;
        let function = module.load_function(&artifact.entry).map_err(|e| {
            Error::cuda(
                format!("finding entry `{}` of kernel `{kernel}`", artifact.entry),
                e,
            )
        })?;
        Ok(CudaCode {
            function,
            threads_per_block: artifact.threads_per_block,
            _module: module,
        })
    }

    /// Queues a launch of `grid` blocks on the device's stream.
    ///
    /// # Safety
    /// `args` must have been checked against the kernel's parameters and packed by
    /// [`super::pack`]; the buffers they point into must outlive the kernel's execution.
    pub(crate) unsafe fn launch(
        &self,
        kernel: &str,
        device: &CudaDevice,
        grid: [u32; 3],
        args: &[u64],
    ) -> Result<()> {
        if let Some(axis) = (0..3).find(|&a| grid[a] > MAX_GRID[a]) {
            return Err(Error::launch(
                kernel,
                format!(
                    "grid {grid:?} exceeds the limit of {} programs along axis {axis}",
                    MAX_GRID[axis]
                ),
            ));
        }
        let config = LaunchConfig {
            grid_dim: (grid[0], grid[1], grid[2]),
            block_dim: (self.threads_per_block, 1, 1),
            // `PtxArtifact::shared_bytes` is declared statically in the PTX: no dynamic part.
            shared_mem_bytes: 0,
        };
        let mut builder = device.stream().launch_builder(&self.function);
        for bits in args {
            // The driver reads each parameter's own size from the address: all of a pointer
            // or an i64, the low 4 bytes of an i32 or f32 (little-endian, asserted above).
            builder.arg(bits);
        }
        // SAFETY: the caller's contract: the arguments match the kernel's parameters.
        unsafe { builder.launch(config) }
            .map(|_| ())
            .map_err(|e| Error::cuda(format!("launching kernel `{kernel}` on grid {grid:?}"), e))
    }
}

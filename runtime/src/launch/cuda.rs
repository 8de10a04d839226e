//! Loading PTX into a CUDA context and launching it on the device's stream.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule, DevicePtr, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use kiln_compiler::backend::nvptx::FAULT_WORDS;

use super::Bound;
use crate::cache::PtxArtifact;
use crate::device::cuda::CudaDevice;
use crate::{Error, Result};

/// An out-of-bounds access a checked kernel recorded: program, parameter index, byte offset,
/// and the access (`a load`).
pub(crate) type CudaFault = ([u32; 3], usize, i64, &'static str);

/// The most threads a block may have on every supported GPU.
const MAX_THREADS_PER_BLOCK: u32 = 1024;
/// Dynamic shared memory a launch may use without raising the function's limit.
const DEFAULT_SHARED_BYTES: u32 = 48 * 1024;
/// Grid limits of compute capability 3.0 and newer.
const MAX_GRID: [u32; 3] = [i32::MAX as u32, 65535, 65535];

// Scalars are pushed as the low bytes of their packed `u64`: only right on little-endian hosts.
const _: () = assert!(cfg!(target_endian = "little"));

/// A loaded PTX kernel.
pub(crate) struct CudaCode {
    function: CudaFunction,
    threads_per_block: u32,
    shared_bytes: u32,
    bounds_checks: bool,
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
        let image = if artifact.cubin.is_empty() {
            Ptx::from_src(artifact.ptx.clone())
        } else {
            Ptx::from_binary(artifact.cubin.clone())
        };
        let module = device
            .context()
            .load_module(image)
            .map_err(|e| Error::cuda(format!("loading the code of kernel `{kernel}`"), e))?;
        let function = module.load_function(&artifact.entry).map_err(|e| {
            Error::cuda(
                format!("finding entry `{}` of kernel `{kernel}`", artifact.entry),
                e,
            )
        })?;
        if artifact.shared_bytes > DEFAULT_SHARED_BYTES {
            use cudarc::driver::sys::CUfunction_attribute_enum as Attr;
            function
                .set_attribute(
                    Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    artifact.shared_bytes as i32,
                )
                .map_err(|e| {
                    Error::cuda(
                        format!(
                            "allowing kernel `{kernel}` {} bytes of shared memory",
                            artifact.shared_bytes
                        ),
                        e,
                    )
                })?;
        }
        Ok(CudaCode {
            function,
            threads_per_block: artifact.threads_per_block,
            shared_bytes: artifact.shared_bytes,
            bounds_checks: artifact.bounds_checks,
            _module: module,
        })
    }

    /// Assembles `artifact`'s PTX for `device`'s GPU with the driver's JIT and returns the cubin;
    /// assembler messages are part of the error.
    pub(crate) fn assemble(device: &CudaDevice, artifact: &PtxArtifact) -> Result<Vec<u8>> {
        use cudarc::driver::sys::{self, CUjitInputType, CUjit_option, CUresult};
        use std::ffi::{c_void, CString};
        let kernel = &artifact.kernel;
        let ptx = CString::new(artifact.ptx.as_bytes())
            .map_err(|_| Error::launch(kernel, "the PTX contains a NUL byte"))?;
        device
            .context()
            .bind_to_thread()
            .map_err(|e| Error::cuda("binding the CUDA context", e))?;
        let mut log = vec![0u8; 16 << 10];
        let mut options = [
            CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
            CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
        ];
        let mut values = [log.as_mut_ptr() as *mut c_void, log.len() as *mut c_void];
        let failed = |what: &str, status: CUresult, log: &[u8]| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let message = format!(
                "{status:?}: {}",
                String::from_utf8_lossy(&log[..end]).trim()
            );
            Error::Cuda {
                context: format!("{what} kernel `{kernel}`"),
                message,
            }
        };
        // SAFETY: every pointer passed lives until the link state is destroyed at the end of
        // this block; the cubin the driver returns is owned by the state, so it is copied out
        // before `cuLinkDestroy`.
        unsafe {
            let mut state = std::ptr::null_mut();
            let status = sys::cuLinkCreate_v2(
                options.len() as u32,
                options.as_mut_ptr(),
                values.as_mut_ptr(),
                &mut state,
            );
            if status != CUresult::CUDA_SUCCESS {
                return Err(failed("starting to assemble", status, &log));
            }
            let name = c"kernel.ptx";
            let mut status = sys::cuLinkAddData_v2(
                state,
                CUjitInputType::CU_JIT_INPUT_PTX,
                ptx.as_ptr() as *mut c_void,
                ptx.as_bytes_with_nul().len(),
                name.as_ptr(),
                0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            let mut cubin = vec![];
            if status == CUresult::CUDA_SUCCESS {
                let (mut image, mut size) = (std::ptr::null_mut(), 0usize);
                status = sys::cuLinkComplete(state, &mut image, &mut size);
                if status == CUresult::CUDA_SUCCESS {
                    cubin = std::slice::from_raw_parts(image as *const u8, size).to_vec();
                }
            }
            sys::cuLinkDestroy(state);
            if status != CUresult::CUDA_SUCCESS {
                return Err(failed("assembling the PTX of", status, &log));
            }
            Ok(cubin)
        }
    }

    /// Queues a launch of `grid` blocks on the device's stream. A kernel compiled with bounds
    /// checks is also waited for, and returns the fault it recorded, if any.
    ///
    /// # Safety
    /// `args` must have been bound to the kernel's parameters ([`super::Args::bind`]); the
    /// buffers they point into must outlive the kernel's execution.
    pub(crate) unsafe fn launch(
        &self,
        kernel: &str,
        device: &CudaDevice,
        grid: [u32; 3],
        args: &Bound,
    ) -> Result<Option<CudaFault>> {
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
            shared_mem_bytes: self.shared_bytes,
        };
        let stream = device.stream();
        let failed = |what: &str, e| Error::cuda(format!("{what} kernel `{kernel}`"), e);
        // Checked kernels take the byte lengths of their buffers and a zeroed fault record.
        let record = if self.bounds_checks {
            let mut words = args.bounds.clone();
            words.extend([0; FAULT_WORDS]);
            Some(
                stream
                    .clone_htod(&words)
                    .map_err(|e| failed("preparing the checks of", e))?,
            )
        } else {
            None
        };
        let extra: Vec<u64> = match &record {
            Some(record) => {
                let (base, _guard) = record.device_ptr(stream);
                vec![base, base + 8 * args.bounds.len() as u64]
            }
            None => vec![],
        };
        let mut builder = stream.launch_builder(&self.function);
        for bits in args.words.iter().chain(&extra) {
            // The driver reads each parameter's own size from the address: all of a pointer
            // or an i64, the low 4 bytes of an i32 or f32 (little-endian, asserted above).
            builder.arg(bits);
        }
        // SAFETY: the caller's contract: the arguments match the kernel's parameters.
        unsafe { builder.launch(config) }
            .map_err(|e| Error::cuda(format!("launching kernel `{kernel}` on grid {grid:?}"), e))?;
        let Some(record) = record else {
            return Ok(None);
        };
        // The copy to pageable memory may return before it is done: wait for it.
        let words = stream
            .clone_dtoh(&record)
            .and_then(|words| stream.synchronize().map(|()| words))
            .map_err(|e| failed("reading the fault record of", e))?;
        let fault = &words[args.bounds.len()..];
        if fault[0] == 0 {
            return Ok(None);
        }
        let access = kiln_compiler::backend::AccessKind::from_code(fault[2])
            .map_or("an access", |kind| kind.describe());
        let linear = fault[3];
        let program = [
            linear % u64::from(grid[0]),
            linear / u64::from(grid[0]) % u64::from(grid[1]),
            linear / (u64::from(grid[0]) * u64::from(grid[1])),
        ]
        .map(|c| c as u32);
        Ok(Some((
            program,
            fault[0] as usize - 1,
            fault[1] as i64,
            access,
        )))
    }
}

//! A CUDA GPU: its context and the one stream all of the runtime's work goes to.

use std::panic::catch_unwind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cudarc::driver::{sys, CudaContext, CudaStream};

use super::blocks::BlockCache;
use super::staging::Pool;

use crate::{Error, Result};

/// An opened GPU. All allocations, copies and launches go to `stream`, so stream order alone
/// orders them.
pub(crate) struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    compute_capability: (u32, u32),
    /// cuBLASLt's handle, workspace and algorithm cache, made by the first GEMM.
    gemm: crate::gemm::cublaslt::Slot,
    /// Pinned slots for uploads that do not wait, and for downloads read later.
    uploads: Arc<Pool>,
    downloads: Arc<Pool>,
    /// Times the host has blocked on this device's work (see [`crate::Device::host_waits`]).
    host_waits: AtomicU64,
    /// Freed allocations kept for reuse (see [`BlockCache`]).
    blocks: Arc<BlockCache>,
}

impl CudaDevice {
    /// Opens device `ordinal`, or says why there is none.
    pub(crate) fn open(ordinal: usize) -> Result<CudaDevice> {
        let ctx = open_context(ordinal).map_err(|reason| Error::NoCudaDevice { reason })?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| Error::cuda("querying the compute capability", e))?;
        let name = ctx
            .name()
            .map_err(|e| Error::cuda("querying the device name", e))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| Error::cuda("creating a stream", e))?;
        // SAFETY: every allocation, copy and launch of this runtime goes to `stream`, so stream
        // order already orders them; cudarc's per-buffer events would only add overhead. This
        // runs before any buffer of this context is created by us.
        unsafe { ctx.disable_event_tracking() };
        crate::profile::watch_stream(&stream);
        Ok(CudaDevice {
            uploads: Pool::uploads(&ctx),
            downloads: Pool::downloads(&ctx),
            ctx,
            stream,
            name,
            compute_capability: (major.max(0) as u32, minor.max(0) as u32),
            gemm: Default::default(),
            host_waits: AtomicU64::new(0),
            blocks: Arc::default(),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    pub(crate) fn compute_capability(&self) -> (u32, u32) {
        self.compute_capability
    }

    /// `(free, total)` bytes of the GPU's memory.
    pub(crate) fn memory(&self) -> Result<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .map_err(|e| Error::cuda(format!("querying the memory of cuda:{}", self.ordinal()), e))
    }

    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub(crate) fn gemm_slot(&self) -> &crate::gemm::cublaslt::Slot {
        &self.gemm
    }

    pub(crate) fn blocks(&self) -> &Arc<BlockCache> {
        &self.blocks
    }

    pub(crate) fn uploads(&self) -> &Pool {
        &self.uploads
    }

    pub(crate) fn downloads(&self) -> &Arc<Pool> {
        &self.downloads
    }

    /// Counts one wait of the host for the device's work.
    pub(crate) fn count_wait(&self) {
        self.host_waits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn host_waits(&self) -> u64 {
        self.host_waits.load(Ordering::Relaxed)
    }

    /// The high-water mark of the bytes allocated from the device's memory pool (every buffer
    /// of this runtime is allocated from it, stream-ordered), and a reset of it.
    pub(crate) fn pool_high_water(&self, reset: bool) -> Result<u64> {
        let failed = |e: sys::CUresult| {
            Error::cuda(
                format!("querying the memory pool of cuda:{}", self.ordinal()),
                cudarc::driver::DriverError(e),
            )
        };
        self.ctx
            .bind_to_thread()
            .map_err(|e| Error::cuda("binding the CUDA context", e))?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: plain queries of the device's default pool into locals of the right types.
        unsafe {
            let r = sys::cuDeviceGetDefaultMemPool(&mut pool, self.ctx.cu_device());
            if r != sys::CUresult::CUDA_SUCCESS {
                return Err(failed(r));
            }
            let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
            let mut high: u64 = 0;
            let r = sys::cuMemPoolGetAttribute(pool, attr, &mut high as *mut u64 as *mut _);
            if r != sys::CUresult::CUDA_SUCCESS {
                return Err(failed(r));
            }
            if reset {
                // The only value the driver accepts: 0 resets the mark to the current use.
                let mut zero: u64 = 0;
                let r = sys::cuMemPoolSetAttribute(pool, attr, &mut zero as *mut u64 as *mut _);
                if r != sys::CUresult::CUDA_SUCCESS {
                    return Err(failed(r));
                }
            }
            Ok(high)
        }
    }

    pub(crate) fn synchronize(&self) -> Result<()> {
        self.count_wait();
        self.stream
            .synchronize()
            .map_err(|e| Error::cuda(format!("synchronizing cuda:{}", self.ordinal()), e))
    }
}

/// The number of devices the driver reports, or why there is no usable driver.
pub(crate) fn device_count() -> std::result::Result<usize, String> {
    // cudarc loads libcuda on first use and panics if it is missing: look for it first. A
    // driver too old for the symbols cudarc binds panics too: keep that a clean error.
    // SAFETY: only tries to dlopen the driver library by its usual names.
    if !unsafe { sys::is_culib_present() } {
        return Err("the CUDA driver library (libcuda.so) could not be loaded; \
                    is an NVIDIA driver installed?"
            .into());
    }
    let started = catch_unwind(|| {
        cudarc::driver::result::init()?;
        CudaContext::device_count()
    });
    match started {
        Ok(Ok(count)) => Ok(usize::try_from(count).unwrap_or(0)),
        Ok(Err(e)) => Err(format!("the CUDA driver failed to start: {e}")),
        Err(panic) => Err(format!(
            "the CUDA driver library is unusable: {}",
            panic_text(&*panic)
        )),
    }
}

/// The primary context of device `ordinal`, or why there is none.
fn open_context(ordinal: usize) -> std::result::Result<Arc<CudaContext>, String> {
    let count = device_count()?;
    if ordinal >= count {
        return Err(format!(
            "device {ordinal} requested, but the driver reports {count} device(s)"
        ));
    }
    match catch_unwind(|| CudaContext::new(ordinal)) {
        Ok(Ok(ctx)) => Ok(ctx),
        Ok(Err(e)) => Err(format!("device {ordinal} could not be opened: {e}")),
        Err(panic) => Err(format!(
            "the CUDA driver library is unusable: {}",
            panic_text(&*panic)
        )),
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown failure")
}

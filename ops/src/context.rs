//! [`Ops`]: a device, the kernel cache, and the kernels already loaded for each launch shape.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use kiln_compiler::{ConstValue, DType, Defines, Source};
use kiln_runtime::{Arg, Buffer, Device, Kernel, KernelCache, KernelSpec, Specialization};

use crate::{kernels, Error, Result};

/// A compile-time constant of a kernel, as the wrappers choose them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Const {
    Int(i64),
    Bool(bool),
}

/// One kernel of a shipped file, specialised: what the wrappers launch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KernelConfig {
    pub file: &'static str,
    pub kernel: &'static str,
    pub defines: Vec<(&'static str, Const)>,
    pub num_warps: u32,
    pub num_stages: u32,
}

impl KernelConfig {
    pub fn new(file: &'static str, kernel: &'static str) -> KernelConfig {
        KernelConfig {
            file,
            kernel,
            defines: vec![],
            num_warps: 4,
            num_stages: 1,
        }
    }

    pub fn int(mut self, name: &'static str, value: usize) -> KernelConfig {
        self.defines.push((name, Const::Int(value as i64)));
        self
    }

    pub fn flag(mut self, name: &'static str, value: bool) -> KernelConfig {
        self.defines.push((name, Const::Bool(value)));
        self
    }

    pub fn warps(mut self, num_warps: u32) -> KernelConfig {
        self.num_warps = num_warps;
        self
    }

    /// Stages of the GPU loop pipeline (see `KernelSpec::with_num_stages`).
    pub fn stages(mut self, num_stages: u32) -> KernelConfig {
        self.num_stages = num_stages;
        self
    }
}

/// The device the operations run on and the kernels they use. Share one per device; it is
/// `Sync`, and a kernel is compiled once per configuration and argument alignment.
pub struct Ops {
    device: Device,
    cache: Arc<KernelCache>,
    loaded: Mutex<HashMap<(KernelConfig, Specialization), Arc<Kernel>>>,
}

impl Ops {
    /// Operations on `device`, compiling through the default (on-disk) kernel cache.
    pub fn new(device: Device) -> Ops {
        Ops::with_cache(device, Arc::new(KernelCache::new()))
    }

    /// Operations on `device` that compile through `cache`.
    pub fn with_cache(device: Device, cache: Arc<KernelCache>) -> Ops {
        Ops {
            device,
            cache,
            loaded: Mutex::default(),
        }
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The kernel cache.
    pub fn cache(&self) -> &Arc<KernelCache> {
        &self.cache
    }

    /// Launches `config` over `grid` with `args`, compiling it first if needed.
    pub(crate) fn launch(
        &self,
        config: &KernelConfig,
        grid: [usize; 3],
        args: &[Arg<'_>],
    ) -> Result<()> {
        let grid = grid.map(|g| u32::try_from(g).unwrap_or(u32::MAX));
        self.kernel(config, args)?.launch(grid, args)?;
        Ok(())
    }

    fn kernel(&self, config: &KernelConfig, args: &[Arg<'_>]) -> Result<Arc<Kernel>> {
        let key = (config.clone(), Specialization::for_args(args));
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(kernel) = loaded.get(&key) {
            return Ok(kernel.clone());
        }
        let defines: Defines = config
            .defines
            .iter()
            .map(|&(name, value)| {
                let value = match value {
                    Const::Int(i) => ConstValue::Int(i),
                    Const::Bool(b) => ConstValue::Bool(b),
                };
                (name.to_string(), value)
            })
            .collect();
        let spec = KernelSpec::new(source(config.file)?, config.kernel)
            .with_defines(&defines)
            .with_num_warps(config.num_warps)
            .with_num_stages(config.num_stages);
        let kernel = self.cache.kernel(&self.device, &spec, &key.1)?;
        loaded.insert(key, kernel.clone());
        Ok(kernel)
    }

    /// A new buffer of `len` elements, zeroed.
    pub(crate) fn scratch(&self, dtype: DType, len: usize) -> Result<Buffer> {
        Ok(self.device.alloc(dtype, len.max(1))?)
    }
}

/// The parsed-once [`Source`] of a shipped kernel file.
fn source(file: &'static str) -> Result<&'static Source> {
    static SOURCES: OnceLock<HashMap<&'static str, Source>> = OnceLock::new();
    let sources = SOURCES.get_or_init(|| {
        kernels::ALL
            .iter()
            .map(|f| (f.name, Source::new(f.name, f.source)))
            .collect()
    });
    sources
        .get(file)
        .ok_or_else(|| Error::shape("kernels", format!("no shipped kernel file `{file}`")))
}

/// Checks that `buffer` holds exactly `len` elements of `dtype`, for argument `what` of `op`.
pub(crate) fn expect(
    op: &'static str,
    what: &str,
    buffer: &Buffer,
    dtype: DType,
    len: usize,
) -> Result<()> {
    if buffer.dtype() != dtype || buffer.len() != len {
        return Err(Error::shape(
            op,
            format!(
                "`{what}` must be {len} x {dtype}, got {} x {}",
                buffer.len(),
                buffer.dtype()
            ),
        ));
    }
    Ok(())
}

/// The block size for rows of `n` elements handled whole by one program: `n` rounded up to
/// a power of two (at least 16, so rows fill whole 16-byte vectors).
pub(crate) fn row_block(n: usize) -> usize {
    n.next_power_of_two().max(16)
}

/// Warps for a program that handles `block` elements: about 8 elements per thread (one
/// 16-byte vector of bf16), between 1 and 8 warps (measured best on the H200 from rows of 896 to
/// 8192 elements: `bench/RESULTS.md`).
pub(crate) fn warps_for(block: usize) -> u32 {
    (block / 256).clamp(1, 8) as u32
}

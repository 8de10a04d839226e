//! [`Ops`]: a device, the kernel cache, and the kernels already loaded for each launch shape.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use kiln_compiler::ir::Param;
use kiln_compiler::{ConstValue, DType, Source};
use kiln_runtime::{
    Args, Buffer, BufferView, BufferViewMut, Device, Kernel, KernelCache, KernelSpec,
    Specialization,
};

use crate::{kernels, Error, Result};

/// A compile-time constant of a kernel, as the wrappers choose them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Const {
    Int(i64),
    Bool(bool),
    /// The value of a type parameter (`T: type`).
    DType(DType),
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

    /// Sets integer constant `name` (replacing any value set before).
    pub fn int(self, name: &'static str, value: usize) -> KernelConfig {
        self.set(name, Const::Int(value as i64))
    }

    /// Sets bool constant `name` (replacing any value set before).
    pub fn flag(self, name: &'static str, value: bool) -> KernelConfig {
        self.set(name, Const::Bool(value))
    }

    /// Sets the element type `T` of the activations (the kernels' type parameter).
    pub fn elem(self, dtype: DType) -> KernelConfig {
        self.set("T", Const::DType(dtype))
    }

    fn set(mut self, name: &'static str, value: Const) -> KernelConfig {
        self.defines.retain(|(n, _)| *n != name);
        self.defines.push((name, value));
        self
    }

    /// The value of integer constant `name` as the kernel is compiled with it. Whatever Rust
    /// derives from a constant (a grid, the size of a buffer of per-program results) reads it
    /// back from here, so the launch and the kernel cannot disagree.
    ///
    /// Panics if the configuration sets no such constant: a bug in the wrapper, which its
    /// tests catch.
    pub fn value(&self, name: &str) -> usize {
        match self.defines.iter().find(|(n, _)| *n == name) {
            Some(&(_, Const::Int(v))) => v as usize,
            _ => panic!(
                "kernel config {}::{} sets no integer constant `{name}`",
                self.file, self.kernel
            ),
        }
    }

    /// The programs that cover `len` items, constant `name` items per program.
    pub fn programs(&self, name: &str, len: usize) -> usize {
        len.div_ceil(self.value(name))
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
    loaded: Mutex<HashMap<KernelConfig, Loaded>>,
}

/// What is known of one configuration: its parameters (what arguments bind to, and what the
/// specialisation of a launch is computed over), and its kernels by specialisation.
struct Loaded {
    params: Arc<[Param]>,
    kernels: HashMap<Specialization, Arc<Kernel>>,
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

    /// Launches `config` over `grid` with `args` (bound to the kernel's parameters by name),
    /// compiling it first if needed.
    pub(crate) fn launch(
        &self,
        config: &KernelConfig,
        grid: [usize; 3],
        args: &Args<'_>,
    ) -> Result<()> {
        let grid = grid.map(|g| u32::try_from(g).unwrap_or(u32::MAX));
        let kernel = kiln_runtime::profile::timed_host(
            || "finding the kernel".into(),
            || self.kernel(config, args),
        )?;
        kernel.launch(grid, args)?;
        Ok(())
    }

    /// The kernel of `config` for the specialisation `args` allow.
    fn kernel(&self, config: &KernelConfig, args: &Args<'_>) -> Result<Arc<Kernel>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if !loaded.contains_key(config) {
            let params = self.cache.params(&spec(config)?)?;
            let entry = Loaded {
                params,
                kernels: HashMap::new(),
            };
            loaded.insert(config.clone(), entry);
        }
        let entry = loaded.get_mut(config).expect("inserted above");
        let specialization = args.specialization(&entry.params);
        if let Some(kernel) = entry.kernels.get(&specialization) {
            return Ok(kernel.clone());
        }
        let kernel = self
            .cache
            .kernel(&self.device, &spec(config)?, &specialization)?;
        entry.kernels.insert(specialization, kernel.clone());
        Ok(kernel)
    }

    /// A new buffer of `len` elements, zeroed.
    pub(crate) fn scratch(&self, dtype: DType, len: usize) -> Result<Buffer> {
        Ok(self.device.alloc(dtype, len.max(1))?)
    }

    /// A new buffer of `len` elements that the next kernel or GEMM writes in full: not
    /// zero-filled ([`kiln_runtime::Device::alloc_uninit`]).
    pub(crate) fn scratch_uninit(&self, dtype: DType, len: usize) -> Result<Buffer> {
        Ok(self.device.alloc_uninit(dtype, len.max(1))?)
    }
}

/// The kernel spec of `config`.
fn spec(config: &KernelConfig) -> Result<KernelSpec<'static>> {
    let spec = config.defines.iter().fold(
        KernelSpec::new(source(config.file)?, config.kernel),
        |spec, &(name, value)| match value {
            Const::Int(i) => spec.define(name, ConstValue::Int(i)),
            Const::Bool(b) => spec.define(name, ConstValue::Bool(b)),
            Const::DType(d) => spec.define(name, ConstValue::DType(d)),
        },
    );
    Ok(spec
        .with_num_warps(config.num_warps)
        .with_num_stages(config.num_stages))
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

/// What the shape checks read of an operation's argument: a [`Buffer`], or a shared or
/// exclusive view of part of one.
pub(crate) trait Operand {
    /// Its length in elements and its element type.
    fn extent(&self) -> (usize, DType);
}

impl Operand for Buffer {
    fn extent(&self) -> (usize, DType) {
        (self.len(), self.dtype())
    }
}

impl Operand for BufferView<'_> {
    fn extent(&self) -> (usize, DType) {
        (self.len(), self.dtype())
    }
}

impl Operand for BufferViewMut<'_> {
    fn extent(&self) -> (usize, DType) {
        (self.len(), self.dtype())
    }
}

/// The element types the activation kernels are built for.
const ACTIVATION_TYPES: [DType; 3] = [DType::Bf16, DType::F32, DType::F16];

/// The element type of an operation's activations, read from its argument `what` (the other
/// activations are then checked against it with [`expect`]): bf16, f32 or f16.
pub(crate) fn activation_type(op: &'static str, what: &str, buffer: &dyn Operand) -> Result<DType> {
    let (_, dtype) = buffer.extent();
    if !ACTIVATION_TYPES.contains(&dtype) {
        return Err(Error::shape(
            op,
            format!("`{what}` is {dtype}; activations must be bf16, f32 or f16"),
        ));
    }
    Ok(dtype)
}

/// Checks that `buffer` holds exactly `len` elements of `dtype`, for argument `what` of `op`.
pub(crate) fn expect(
    op: &'static str,
    what: &str,
    buffer: &dyn Operand,
    dtype: DType,
    len: usize,
) -> Result<()> {
    let (got_len, got_dtype) = buffer.extent();
    if got_dtype != dtype || got_len != len {
        return Err(Error::shape(
            op,
            format!("`{what}` must be {len} x {dtype}, got {got_len} x {got_dtype}"),
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

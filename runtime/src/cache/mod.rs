//! The kernel cache: source to loaded kernel, compiling each (source, defines, kernel, backend,
//! target, specialisation) once.
//!
//! Three layers, checked in order:
//! 1. loaded kernels, per device, in memory;
//! 2. PTX artefacts in memory, then in a [`DiskCache`] directory that outlives the process (a
//!    warm start compiles nothing);
//! 3. the compiler. Native CPU code is cached in memory only.

mod artifact;
mod compile;
mod disk;
mod key;
mod source_digest;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

pub use artifact::PtxArtifact;
pub use disk::{DiskCache, Lookup};
pub use key::{Backend, BoundsChecks, CacheKey, KernelSpec, Specialization};

use kiln_compiler::ir::Param;

use crate::device::{Device, DeviceKind};
use crate::kernel::Kernel;
use crate::launch::Args;
use crate::Result;
use source_digest::SourceDigests;

/// Counts of where the cache found what it was asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Found in memory (a loaded kernel, or a PTX artefact for another device).
    pub memory_hits: u64,
    /// Read from the disk directory.
    pub disk_hits: u64,
    /// Compiled.
    pub misses: u64,
    /// Disk entries rejected as truncated or corrupt (then rebuilt and overwritten).
    pub corrupt_entries: u64,
    /// Disk reads or writes that failed (the cache then works from memory).
    pub disk_errors: u64,
}

#[derive(Default)]
struct Counters {
    memory_hits: AtomicU64,
    disk_hits: AtomicU64,
    misses: AtomicU64,
    corrupt_entries: AtomicU64,
    disk_errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Loaded kernels by device (`None` for the CPU, else the CUDA ordinal), then by key text.
type Loaded = HashMap<Option<usize>, HashMap<String, Arc<Kernel>>>;

/// Compiled kernels by key, for any number of devices. Share one per process (it is `Sync`).
pub struct KernelCache {
    disk: Option<DiskCache>,
    /// Whether GPU kernels are compiled with bounds checks whatever their spec says.
    gpu_bounds_checks: bool,
    /// Kernel signatures by the text of their key without target or tuning.
    params: Mutex<HashMap<String, Arc<[Param]>>>,
    ptx: Mutex<HashMap<[u8; 32], Arc<PtxArtifact>>>,
    loaded: Mutex<Loaded>,
    source_digests: SourceDigests,
    counters: Counters,
}

impl Default for KernelCache {
    fn default() -> Self {
        KernelCache::new()
    }
}

impl KernelCache {
    /// A cache on disk in [`KernelCache::default_dir`], or in memory only if there is none.
    pub fn new() -> KernelCache {
        match Self::default_dir() {
            Some(dir) => Self::with_dir(dir),
            None => Self::in_memory(),
        }
    }

    /// A cache whose PTX entries live in `dir` (created when first written).
    pub fn with_dir(dir: impl Into<PathBuf>) -> KernelCache {
        KernelCache::build(Some(DiskCache::new(dir)))
    }

    /// A cache in memory only.
    pub fn in_memory() -> KernelCache {
        KernelCache::build(None)
    }

    fn build(disk: Option<DiskCache>) -> KernelCache {
        KernelCache {
            disk,
            gpu_bounds_checks: std::env::var_os("KILN_GPU_BOUNDS_CHECKS").is_some_and(|v| v == "1"),
            params: Mutex::default(),
            ptx: Mutex::default(),
            loaded: Mutex::default(),
            source_digests: SourceDigests::default(),
            counters: Counters::default(),
        }
    }

    /// `$KILN_CACHE_DIR` if set and not empty, else `kiln` in the user's cache directory
    /// (`~/.cache/kiln` on Linux).
    pub fn default_dir() -> Option<PathBuf> {
        match std::env::var_os("KILN_CACHE_DIR") {
            Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
            _ => dirs::cache_dir().map(|d| d.join("kiln")),
        }
    }

    /// The same cache, compiling every GPU kernel with bounds checks (as if each spec asked
    /// for [`BoundsChecks::On`]): what test suites use, so that an
    /// out-of-bounds access on a GPU is an error rather than corrupted memory. Slow. The
    /// environment variable `KILN_GPU_BOUNDS_CHECKS=1` turns it on for caches made by
    /// [`KernelCache::new`], [`KernelCache::with_dir`] and [`KernelCache::in_memory`]. The default
    /// GPU launch trusts the kernel's masks; the CPU always checks.
    pub fn with_gpu_bounds_checks(self, on: bool) -> KernelCache {
        KernelCache {
            gpu_bounds_checks: on,
            ..self
        }
    }

    /// Whether GPU kernels are always compiled with bounds checks.
    pub fn gpu_bounds_checks(&self) -> bool {
        self.gpu_bounds_checks
    }

    /// The disk layer, if any.
    pub fn disk(&self) -> Option<&DiskCache> {
        self.disk.as_ref()
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            memory_hits: get(&c.memory_hits),
            disk_hits: get(&c.disk_hits),
            misses: get(&c.misses),
            corrupt_entries: get(&c.corrupt_entries),
            disk_errors: get(&c.disk_errors),
        }
    }

    /// The key `spec` has on `device`. Parts a backend ignores are left out (the CPU ignores
    /// the numbers of warps and stages and the specialisation), so they cannot cause needless
    /// compiles.
    pub fn key(
        &self,
        device: &Device,
        spec: &KernelSpec<'_>,
        specialization: &Specialization,
    ) -> Result<CacheKey> {
        let source = self.source_digests.get(&spec.source.text);
        Ok(match device.kind() {
            DeviceKind::Cpu => {
                // Whether the code is checked is all the CPU cares about.
                let bounds_checks = match spec.bounds_checks.checked(false) {
                    true => BoundsChecks::Default,
                    false => BoundsChecks::Off,
                };
                let spec = KernelSpec {
                    num_warps: 0,
                    num_stages: 1,
                    bounds_checks,
                    ..spec.clone()
                };
                let target = std::env::consts::ARCH;
                let none = Specialization::NONE;
                CacheKey::with_source_digest(&spec, &source, Backend::Cranelift, target, &none)
            }
            DeviceKind::Cuda => {
                let target = ptx_target(device)?;
                let spec = self.gpu_spec(spec);
                CacheKey::with_source_digest(&spec, &source, Backend::Nvptx, target, specialization)
            }
        })
    }

    /// `spec` as compiled for a GPU by this cache.
    fn gpu_spec<'a>(&self, spec: &KernelSpec<'a>) -> KernelSpec<'a> {
        let bounds_checks = match (spec.bounds_checks.checked(true), self.gpu_bounds_checks) {
            (false, false) => BoundsChecks::Default,
            _ => BoundsChecks::On,
        };
        KernelSpec {
            bounds_checks,
            ..spec.clone()
        }
    }

    /// The run-time parameters of the kernel `spec` names, in order: what its arguments are
    /// bound to. Checks the source once per spec (no code is generated).
    pub fn params(&self, spec: &KernelSpec<'_>) -> Result<Arc<[Param]>> {
        let source = self.source_digests.get(&spec.source.text);
        let key = format!(
            "{}\n{:?}\n{:?}",
            key::hex(&source),
            spec.defines,
            spec.kernel
        );
        if let Some(params) = lock(&self.params).get(&key) {
            return Ok(params.clone());
        }
        let params: Arc<[Param]> = compile::params(spec)?.into();
        lock(&self.params).insert(key, params.clone());
        Ok(params)
    }

    /// The kernel `spec` names, loaded on `device`, compiled if no layer has it.
    pub fn kernel(
        &self,
        device: &Device,
        spec: &KernelSpec<'_>,
        specialization: &Specialization,
    ) -> Result<Arc<Kernel>> {
        let key = self.key(device, spec, specialization)?;
        let loaded = |map: &Loaded| map.get(&device.ordinal())?.get(key.text()).cloned();
        if let Some(kernel) = loaded(&lock(&self.loaded)) {
            bump(&self.counters.memory_hits);
            return Ok(kernel);
        }
        let kernel = match device.kind() {
            DeviceKind::Cpu => {
                bump(&self.counters.misses);
                Kernel::from_cpu(device, compile::cranelift(spec)?)
            }
            DeviceKind::Cuda => {
                self.load_ptx(device, &self.gpu_spec(spec), specialization, &key)?
            }
        };
        // Another thread may have loaded it meanwhile; keep the first so all callers share one.
        Ok(lock(&self.loaded)
            .entry(device.ordinal())
            .or_default()
            .entry(key.text().to_string())
            .or_insert(Arc::new(kernel))
            .clone())
    }

    #[cfg(feature = "cuda")]
    fn load_ptx(
        &self,
        device: &Device,
        spec: &KernelSpec<'_>,
        specialization: &Specialization,
        key: &CacheKey,
    ) -> Result<Kernel> {
        let arch = ptx_arch(device)?;
        let artifact = self.ptx_artifact(key, || {
            let mut artifact = compile::ptx(spec, arch, specialization)?;
            let crate::device::Inner::Cuda(cuda) = device.inner() else {
                return Err(crate::Error::Unsupported(format!(
                    "assembling PTX on {device}"
                )));
            };
            artifact.cubin = crate::launch::cuda::CudaCode::assemble(cuda, &artifact)?;
            Ok(artifact)
        })?;
        Kernel::from_ptx(device, &artifact)
    }

    #[cfg(not(feature = "cuda"))]
    fn load_ptx(
        &self,
        device: &Device,
        _: &KernelSpec<'_>,
        _: &Specialization,
        _: &CacheKey,
    ) -> Result<Kernel> {
        Err(crate::Error::Unsupported(format!(
            "{device}: built without the `cuda` feature"
        )))
    }

    /// [`KernelCache::kernel`] for many kernels at once, compiled in parallel on the CPU's
    /// cores: how a program makes its whole kernel set ready at start-up.
    pub fn kernels(
        &self,
        device: &Device,
        requests: &[(KernelSpec<'_>, Specialization)],
    ) -> Result<Vec<Arc<Kernel>>> {
        use rayon::prelude::*;
        requests
            .par_iter()
            .map(|(spec, specialization)| self.kernel(device, spec, specialization))
            .collect()
    }

    /// Compiles (or finds) the kernel for `args` on `device`, binds `args` to its parameters
    /// by name and launches a grid of `grid` programs (see [`Kernel::launch`]).
    pub fn launch(
        &self,
        device: &Device,
        spec: &KernelSpec<'_>,
        grid: [u32; 3],
        args: &Args<'_>,
    ) -> Result<()> {
        let specialization = args.specialization(&self.params(spec)?);
        let kernel = self.kernel(device, spec, &specialization)?;
        kernel.launch(grid, args)
    }

    /// The PTX artefact for `key`: from memory, else from disk, else from `compile` (then
    /// written to disk). A corrupt disk entry is counted, never used, and overwritten. Disk
    /// failures are counted and otherwise ignored: the cache still works from memory.
    pub fn ptx_artifact(
        &self,
        key: &CacheKey,
        compile: impl FnOnce() -> Result<PtxArtifact>,
    ) -> Result<Arc<PtxArtifact>> {
        if let Some(artifact) = lock(&self.ptx).get(key.digest()) {
            bump(&self.counters.memory_hits);
            return Ok(artifact.clone());
        }
        if let Some(artifact) = self.read_disk(key) {
            bump(&self.counters.disk_hits);
            return Ok(self.remember(key, artifact));
        }
        bump(&self.counters.misses);
        let artifact = compile()?;
        if let Some(disk) = &self.disk {
            if disk.store(key, &artifact.encode()).is_err() {
                bump(&self.counters.disk_errors);
            }
        }
        Ok(self.remember(key, artifact))
    }

    fn read_disk(&self, key: &CacheKey) -> Option<PtxArtifact> {
        let lookup = match self.disk.as_ref()?.load(key) {
            Ok(lookup) => lookup,
            Err(_) => {
                bump(&self.counters.disk_errors);
                return None;
            }
        };
        match lookup {
            Lookup::Hit(bytes) => {
                let artifact = PtxArtifact::decode(&bytes);
                if artifact.is_none() {
                    bump(&self.counters.corrupt_entries);
                }
                artifact
            }
            Lookup::Corrupt(_) => {
                bump(&self.counters.corrupt_entries);
                None
            }
            Lookup::Missing => None,
        }
    }

    fn remember(&self, key: &CacheKey, artifact: PtxArtifact) -> Arc<PtxArtifact> {
        lock(&self.ptx)
            .entry(*key.digest())
            .or_insert(Arc::new(artifact))
            .clone()
    }
}

/// A poisoned map is still a valid map (entries are inserted whole), so use it anyway.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(feature = "cuda")]
fn ptx_arch(device: &Device) -> Result<kiln_compiler::backend::nvptx::Arch> {
    device.arch().ok_or_else(|| {
        let (major, minor) = device.compute_capability().unwrap_or((0, 0));
        crate::Error::Unsupported(format!(
            "{device} ({}) has compute capability {major}.{minor}; kiln targets sm_80 and newer",
            device.name()
        ))
    })
}

/// The PTX target name for `device` (`"sm_90"`).
fn ptx_target(device: &Device) -> Result<&'static str> {
    #[cfg(feature = "cuda")]
    {
        Ok(ptx_arch(device)?.name())
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(crate::Error::Unsupported(format!(
            "{device}: built without the `cuda` feature"
        )))
    }
}

//! Cache keys: a canonical text naming everything a compiled artefact depends on, and its
//! SHA-256 digest.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::OnceLock;

use kiln_compiler::{ConstValue, Defines, Source};
use sha2::{Digest, Sha256};

/// The code generator an artefact comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Native code for this machine (kept in memory only).
    Cranelift,
    /// PTX for a GPU architecture (kept in memory and on disk).
    Nvptx,
}

impl Backend {
    /// The backend's name in keys and messages.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cranelift => "cranelift",
            Backend::Nvptx => "nvptx",
        }
    }
}

/// Which kernel of which source, specialised how: what a caller asks the cache for.
///
/// ```
/// # use kiln_runtime::KernelSpec;
/// # let source = kiln_compiler::Source::new("scale.kiln", "");
/// let spec = KernelSpec::new(&source, "scale").define("BLOCK", 256).with_num_warps(8);
/// ```
#[derive(Clone, Debug)]
pub struct KernelSpec<'a> {
    /// The source file holding the kernel.
    pub source: &'a Source,
    /// Values of its compile-time constants (borrowed, or owned once [`KernelSpec::define`]
    /// added one).
    pub defines: Cow<'a, Defines>,
    /// The kernel's name in the source.
    pub kernel: &'a str,
    /// Warps per program on a GPU (ignored on the CPU).
    pub num_warps: u32,
    /// Stages of the GPU software pipeline of loops that load tiles for tensor-core dots; 1
    /// turns it off (ignored on the CPU).
    pub num_stages: u32,
    /// Whether accesses are checked against the bounds of their buffers.
    pub bounds_checks: BoundsChecks,
}

/// Which launches check every memory access against the buffer its pointer came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BoundsChecks {
    /// On the CPU, checked (an access outside its buffer is an [`crate::Error::OutOfBounds`]);
    /// on a GPU, the kernel's masks are trusted, as CUDA does.
    #[default]
    Default,
    /// Checked on every device: a GPU kernel gets the checks compiled in and each launch waits
    /// for it to report (slow; what test suites use).
    On,
    /// Checked nowhere. A CPU kernel compiled so is launched only through the `unsafe`
    /// [`crate::Kernel::launch_unchecked`]: the caller vouches that every access stays inside
    /// its buffer.
    Off,
}

impl BoundsChecks {
    /// Whether a kernel for `device_is_gpu` is compiled with checks.
    pub fn checked(self, device_is_gpu: bool) -> bool {
        match self {
            BoundsChecks::Default => !device_is_gpu,
            BoundsChecks::On => true,
            BoundsChecks::Off => false,
        }
    }
}

impl<'a> KernelSpec<'a> {
    /// The default number of warps per program on a GPU.
    pub const DEFAULT_NUM_WARPS: u32 = 4;

    /// Kernel `kernel` of `source`, with no defines and the default number of warps.
    pub fn new(source: &'a Source, kernel: &'a str) -> KernelSpec<'a> {
        KernelSpec {
            source,
            defines: Cow::Owned(Defines::new()),
            kernel,
            num_warps: Self::DEFAULT_NUM_WARPS,
            num_stages: 1,
            bounds_checks: BoundsChecks::Default,
        }
    }

    /// The same kernel with these compile-time constants (replacing any set before).
    pub fn with_defines(self, defines: &'a Defines) -> KernelSpec<'a> {
        KernelSpec {
            defines: Cow::Borrowed(defines),
            ..self
        }
    }

    /// The same kernel with compile-time constant `name` set to `value` (an integer, float or
    /// bool: `.define("BLOCK", 1024)`).
    pub fn define(mut self, name: &str, value: impl Into<ConstValue>) -> KernelSpec<'a> {
        self.defines.to_mut().insert(name.to_string(), value.into());
        self
    }

    /// The same kernel with these bounds checks (see [`BoundsChecks`]).
    pub fn with_bounds_checks(self, bounds_checks: BoundsChecks) -> KernelSpec<'a> {
        KernelSpec {
            bounds_checks,
            ..self
        }
    }

    /// The same kernel with `num_warps` warps per program on a GPU.
    pub fn with_num_warps(self, num_warps: u32) -> KernelSpec<'a> {
        KernelSpec { num_warps, ..self }
    }

    /// The same kernel with a `num_stages`-stage loop pipeline on a GPU (at least 1).
    pub fn with_num_stages(self, num_stages: u32) -> KernelSpec<'a> {
        KernelSpec {
            num_stages: num_stages.max(1),
            ..self
        }
    }
}

/// What a launch's actual arguments allow the code generator to assume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Specialization {
    /// Bit `i` is set when parameter `i` is a pointer aligned to 16 bytes or an integer
    /// divisible by 16 (parameters past the 64th are never marked).
    pub divisible_by_16: u64,
}

impl Specialization {
    /// No assumptions: valid for every launch.
    pub const NONE: Specialization = Specialization { divisible_by_16: 0 };

    /// What `args` allow a kernel with `params`: computed from the values themselves, so each
    /// launch gets a kernel that is valid for it (see [`crate::Args::specialization`]).
    pub fn for_args(args: &crate::Args<'_>, params: &[kiln_compiler::ir::Param]) -> Specialization {
        args.specialization(params)
    }
}

/// The identity of a compiled artefact. Two requests share an artefact exactly when their keys'
/// canonical texts are equal; the digest of the text names it on disk. The digest is computed
/// on first use: in-memory lookups compare texts and never need it.
#[derive(Clone, Debug)]
pub struct CacheKey {
    text: String,
    digest: OnceLock<[u8; 32]>,
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &CacheKey) -> bool {
        self.text == other.text
    }
}

impl Eq for CacheKey {}

impl std::hash::Hash for CacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state)
    }
}

impl CacheKey {
    /// Version of the key and entry formats; bump when either changes meaning.
    pub const FORMAT: u32 = 5;

    /// The key of `spec` compiled by `backend` for `target` (`"sm_90"`, `"x86_64"`, ...).
    ///
    /// It covers the compiler version, the source text (by its SHA-256), every define, the
    /// kernel name, backend, target, numbers of warps and pipeline stages, bounds checks, and the
    /// specialisation. The source's file
    /// name is left out: it only appears in error messages, and errors are never cached.
    pub fn new(
        spec: &KernelSpec<'_>,
        backend: Backend,
        target: &str,
        specialization: &Specialization,
    ) -> CacheKey {
        let source_digest = Sha256::digest(spec.source.text.as_bytes()).into();
        Self::with_source_digest(spec, &source_digest, backend, target, specialization)
    }

    /// [`CacheKey::new`] with the SHA-256 of `spec.source.text` already computed.
    pub(crate) fn with_source_digest(
        spec: &KernelSpec<'_>,
        source_digest: &[u8; 32],
        backend: Backend,
        target: &str,
        specialization: &Specialization,
    ) -> CacheKey {
        let mut text = String::new();
        // `{:?}` quotes and escapes names, so no field can run into the next.
        let _ = writeln!(text, "kiln kernel cache key v{}", Self::FORMAT);
        let _ = writeln!(text, "compiler {:?}", env!("CARGO_PKG_VERSION"));
        let _ = writeln!(text, "backend {}", backend.name());
        let _ = writeln!(text, "target {target:?}");
        let _ = writeln!(text, "kernel {:?}", spec.kernel);
        let _ = writeln!(text, "num_warps {}", spec.num_warps);
        let _ = writeln!(text, "num_stages {}", spec.num_stages);
        let _ = writeln!(text, "bounds_checks {:?}", spec.bounds_checks);
        let _ = writeln!(
            text,
            "divisible_by_16 {:#018x}",
            specialization.divisible_by_16
        );
        for (name, value) in spec.defines.iter() {
            let value = match value {
                ConstValue::Int(v) => format!("int {v}"),
                ConstValue::Float(v) => format!("float {:#018x}", v.to_bits()),
                ConstValue::Bool(v) => format!("bool {v}"),
                ConstValue::DType(d) => format!("type {d}"),
            };
            let _ = writeln!(text, "define {name:?} {value}");
        }
        let _ = writeln!(
            text,
            "source {} bytes sha256 {}",
            spec.source.text.len(),
            hex(source_digest)
        );
        CacheKey::from_text(text)
    }

    /// A key with this canonical text, for artefacts described some other way.
    pub fn from_text(text: impl Into<String>) -> CacheKey {
        CacheKey {
            text: text.into(),
            digest: OnceLock::new(),
        }
    }

    /// The canonical text: one `field value` per line.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// SHA-256 of the canonical text.
    pub fn digest(&self) -> &[u8; 32] {
        self.digest
            .get_or_init(|| Sha256::digest(self.text.as_bytes()).into())
    }

    /// The digest in lowercase hexadecimal.
    pub fn hex(&self) -> String {
        hex(self.digest())
    }
}

/// Lowercase hexadecimal of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

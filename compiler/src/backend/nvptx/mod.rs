//! The GPU backend: tile IR to LLVM IR for `nvptx64-nvidia-cuda`, then PTX.
//!
//! ABI of a compiled kernel: one `.entry` named after the kernel whose parameters are the kernel's
//! run-time parameters in order: pointers as `.u64` (global address space), `i32`/`i64`/`f32`
//! scalars by value. One program runs per thread block of `32 * num_warps` threads;
//! `program_id(a)` is `%ctaid.{x,y,z}` and `num_programs(a)` is `%nctaid.{x,y,z}`.
//!
//! How tiles live on the GPU is described in [`layout`] (and the tensor-core fragments in
//! [`mma`]); [`assign`] picks each value's layout, and the alignment facts that allow vector
//! loads are computed in [`axis`]. Lowering is split by concern: `lower` walks the IR, `control`
//! owns control flow, `arith` does elementwise math and casts, `memory` loads, stores and
//! atomics, `reduce` reductions, `dot` matrix products (tensor cores or FMA loops), `shared` the
//! layout conversions that go through shared memory, `remat` those that need none (index
//! grids, masks and pointer tiles are recomputed in the layout that needs them), `pipeline`
//! the software pipeline that copies a loop's dot operands into a ring of shared buffers ahead
//! of their use (`cp.async`, [`PtxOptions::num_stages`]), `bounds` the checks of every global
//! access in checked kernels ([`PtxOptions::bounds_checks`]).
//!
//! Shared memory is one dynamic buffer per block: the scratch space of the conversions first,
//! then the pipeline rings; [`PtxKernel::shared_bytes`] is what a launch must provide.
//!
//! Every generated kernel is checked with `ptxas` in the tests, but none has yet run on a GPU
//! from this crate's tests (the `kiln-ops` tests run kernels on a GPU where there is one).
//! What most needs checking there (`compiler/tests/compiler/nvptx_gpu.py` runs the test kernels
//! against PyTorch): the predicated inline-PTX vector loads (zero fill, word order of `bf16`
//! pairs), lane ownership of replicated tiles in stores and atomics, the two-barrier
//! shared-memory protocol inside loops, the cross-warp reduction, `argmax` ties and NaNs, the
//! accuracy of the approximate math listed in `arith`, and the tensor-core path of `dot`
//! (whose fragment and `ldmatrix` mappings are simulated against the PTX ISA in the tests).

mod arith;
pub mod assign;
pub mod axis;
mod bounds;
mod control;
pub mod decisions;
mod dot;
mod intrinsics;
pub mod layout;
mod lower;
mod memory;
pub mod mma;
mod pipeline;
pub mod reduce;
mod remat;
mod shared;
mod target;
mod wgmma;

use super::BackendError;
use crate::ir::{Kernel, Param, ParamKind};
use inkwell::context::Context;

/// A GPU architecture PTX is generated for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    Sm80,
    Sm90,
    /// sm_90 with its architecture-specific instructions (`wgmma`): PTX for it runs on
    /// compute capability 9.0 only.
    Sm90a,
}

impl Arch {
    /// From a compute capability (8.x -> sm_80, 9.0 -> sm_90a); newer chips get the newest
    /// portable target, sm_90.
    pub fn from_compute_capability(major: u32, minor: u32) -> Option<Arch> {
        match (major, minor) {
            (8, _) => Some(Arch::Sm80),
            (9, 0) => Some(Arch::Sm90a),
            (9.., _) => Some(Arch::Sm90),
            _ => None,
        }
    }

    /// From a target name as [`Arch::name`] gives it.
    pub fn from_name(name: &str) -> Option<Arch> {
        [Arch::Sm80, Arch::Sm90, Arch::Sm90a]
            .into_iter()
            .find(|a| a.name() == name)
    }

    /// Whether the warpgroup matrix instructions (`wgmma`) exist.
    pub fn has_wgmma(self) -> bool {
        self == Arch::Sm90a
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Sm80 => "sm_80",
            Arch::Sm90 => "sm_90",
            Arch::Sm90a => "sm_90a",
        }
    }

    /// The most shared memory one block may use (opting in past 48 KiB): 163 KiB on sm_80
    /// (A100), 227 KiB on sm_90 (H100, H200).
    pub fn max_shared_bytes(self) -> u32 {
        match self {
            Arch::Sm80 => 163 * 1024,
            Arch::Sm90 | Arch::Sm90a => 227 * 1024,
        }
    }
}

/// How to compile: target, number of warps per program, and alignment specialisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PtxOptions {
    pub arch: Arch,
    /// Warps per program; a power of two from 1 to 32.
    pub num_warps: u32,
    /// Bit `i` set: parameter `i` is known at launch to be a multiple of 16 (an integer) or
    /// 16-byte aligned (a pointer). The launcher computes this mask from the actual arguments and
    /// compiles one variant per mask; it enables 16-byte vector loads and stores.
    pub divisible_by_16: u64,
    /// Stages of the software pipeline of loops that load tiles for tensor-core dots (see
    /// `pipeline`): such a loop copies its tiles `num_stages - 1` iterations ahead, straight
    /// to shared memory. 0 or 1 turns pipelining off; at most [`MAX_STAGES`].
    pub num_stages: u32,
    /// Compile bounds checks in (the checked launches of the test suite): the kernel takes two
    /// more `u64` parameters after its own, `bounds` (the byte length of each parameter's
    /// buffer, one `u64` per parameter, 0 for scalars) and `fault` (a record of
    /// [`FAULT_WORDS`] `u64`s, zeroed before the launch). A lane whose address is outside the
    /// buffers its pointer may point into is skipped, and the first such access of the launch
    /// is recorded: `fault[0]` = parameter index + 1, `fault[1]` = byte offset from that
    /// parameter's address, `fault[2]` = access kind (1 load, 2 store, 3 atomic add),
    /// `fault[3]` = the linear program id.
    pub bounds_checks: bool,
}

/// The most [`PtxOptions::num_stages`]: each stage holds one more iteration's tiles in shared
/// memory, and past a handful the copies are as far ahead as memory latency needs.
pub const MAX_STAGES: u32 = 8;

/// The most registers one thread may hold for one tile (its elements over the block's threads,
/// at least one). A thread has at most 255 registers, so a tile past that spills; one much
/// larger, unrolled into straight-line code, takes LLVM and `ptxas` minutes. Kernels with
/// larger tiles are refused: they need more warps or smaller tiles.
pub const MAX_TILE_REGS: u32 = 1024;

/// Words of the fault record of a kernel compiled with [`PtxOptions::bounds_checks`].
pub const FAULT_WORDS: usize = 4;

impl PtxOptions {
    /// Options with no alignment specialisation and no loop pipelining.
    pub fn new(arch: Arch, num_warps: u32) -> PtxOptions {
        PtxOptions {
            arch,
            num_warps,
            divisible_by_16: 0,
            num_stages: 1,
            bounds_checks: false,
        }
    }

    /// The parameter is specialised as 16-divisible.
    pub fn param_divisible_by_16(&self, index: usize) -> bool {
        index < 64 && self.divisible_by_16 >> index & 1 == 1
    }
}

/// The [`PtxOptions::divisible_by_16`] mask for one launch: `args[i]` is parameter `i` as the
/// launcher passes it (a pointer's address, an integer's value sign-extended to 64 bits, a
/// float's bits). Pointers that are 16-byte aligned and integers that are multiples of 16 get
/// their bit; floats never do.
pub fn divisibility_mask(params: &[Param], args: &[u64]) -> u64 {
    let mut mask = 0;
    for (i, (p, &a)) in params.iter().zip(args).enumerate().take(64) {
        let divisible = match p.kind {
            ParamKind::Ptr { .. } => a % 16 == 0,
            ParamKind::Scalar(d) => d.is_int() && a % 16 == 0,
        };
        if divisible {
            mask |= 1 << i;
        }
    }
    mask
}

/// A compiled kernel: PTX text plus what the launcher needs.
#[derive(Clone, Debug)]
pub struct PtxKernel {
    pub ptx: String,
    /// The `.entry` name.
    pub entry: String,
    pub threads_per_block: u32,
    /// Dynamic shared memory every launch must give the kernel, in bytes (past 48 KiB the
    /// launcher must also raise the function's limit).
    pub shared_bytes: u32,
}

/// Compiles a kernel to PTX (LLVM at `-O3`).
pub fn compile_ptx(k: &Kernel, opts: &PtxOptions) -> Result<PtxKernel, BackendError> {
    let context = Context::create();
    let built = lower::build_module(&context, k, opts)?;
    let ptx = target::emit_ptx(&built.module, opts).map_err(|m| error(k, m))?;
    Ok(PtxKernel {
        ptx,
        entry: k.name.clone(),
        threads_per_block: 32 * opts.num_warps,
        shared_bytes: built.shared_bytes,
    })
}

pub use decisions::{render_notes, Annotations};

/// Compiles several kernels into one PTX module, one `.entry` each (what `kiln compile --emit
/// ptx` prints for a file of several kernels: PTX text that `ptxas` accepts as it is). Each
/// kernel has its own options (its alignment specialisation, say), but they must all target
/// one architecture.
pub fn compile_ptx_module(kernels: &[(&Kernel, PtxOptions)]) -> Result<String, BackendError> {
    let Some((first, opts)) = kernels.first() else {
        return Err(BackendError {
            backend: "nvptx",
            kernel: String::new(),
            message: "a PTX module needs at least one kernel".into(),
        });
    };
    let context = Context::create();
    let module = lower::build_module(&context, first, opts)?.module;
    for (k, o) in &kernels[1..] {
        if o.arch != opts.arch {
            return Err(error(
                k,
                format!(
                    "one PTX module has one target, but this kernel is for {} and `{}` for {}",
                    o.arch.name(),
                    first.name,
                    opts.arch.name()
                ),
            ));
        }
        let built = lower::build_module(&context, k, o)?;
        module
            .link_in_module(built.module)
            .map_err(|e| error(k, format!("linking into one module: {e}")))?;
    }
    target::emit_ptx(&module, opts).map_err(|m| error(first, m))
}

/// The optimised LLVM IR of a kernel, as text (`kiln compile --emit llvm`).
pub fn emit_llvm(k: &Kernel, opts: &PtxOptions) -> Result<String, BackendError> {
    let context = Context::create();
    let built = lower::build_module(&context, k, opts)?;
    target::optimize(&built.module, opts).map_err(|m| error(k, m))?;
    Ok(built.module.print_to_string().to_string())
}

fn error(k: &Kernel, message: impl Into<String>) -> BackendError {
    BackendError {
        backend: "nvptx",
        kernel: k.name.clone(),
        message: message.into(),
    }
}

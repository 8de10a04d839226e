//! The GPU backend: tile IR to LLVM IR for `nvptx64-nvidia-cuda`, then PTX. (To be written.)
//!
//! ABI of a compiled kernel: one `.entry` named after the kernel whose parameters are the kernel's
//! run-time parameters in order: pointers as `.u64`, `i32`/`i64`/`f32` scalars by value. One
//! program runs per thread block; `program_id(a)` is `%ctaid.{x,y,z}`.

use super::BackendError;
use crate::ir::Kernel;

/// A GPU architecture PTX is generated for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    Sm80,
    Sm90,
}

impl Arch {
    /// From a compute capability (8.0 -> sm_80, 9.0 -> sm_90); newer chips get the newest target.
    pub fn from_compute_capability(major: u32, minor: u32) -> Option<Arch> {
        match (major, minor) {
            (8, _) => Some(Arch::Sm80),
            (9.., _) => Some(Arch::Sm90),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Sm80 => "sm_80",
            Arch::Sm90 => "sm_90",
        }
    }
}

/// How to compile: target and number of warps per program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PtxOptions {
    pub arch: Arch,
    pub num_warps: u32,
}

/// A compiled kernel: PTX text plus what the launcher needs.
#[derive(Clone, Debug)]
pub struct PtxKernel {
    pub ptx: String,
    /// The `.entry` name.
    pub entry: String,
    pub threads_per_block: u32,
    /// Static shared memory the kernel declares, in bytes.
    pub shared_bytes: u32,
}

pub fn compile_ptx(k: &Kernel, _opts: &PtxOptions) -> Result<PtxKernel, BackendError> {
    Err(BackendError {
        backend: "nvptx",
        kernel: k.name.clone(),
        message: "not implemented".into(),
    })
}

pub fn emit_llvm(k: &Kernel, _opts: &PtxOptions) -> Result<String, BackendError> {
    Err(BackendError {
        backend: "nvptx",
        kernel: k.name.clone(),
        message: "not implemented".into(),
    })
}

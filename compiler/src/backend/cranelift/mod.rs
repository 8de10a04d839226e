//! The CPU backend: tile IR to native code through Cranelift. (To be written.)
//!
//! ABI of a compiled kernel: one native function
//! `extern "C" fn(args: *const u64, program_id: *const u32, num_programs: *const u32)` run once
//! per program. `args[i]` holds parameter `i`: a pointer's address, or a scalar's bits
//! zero-extended (i32, f32 as its IEEE bits, i64).

use super::BackendError;
use crate::ir::{Kernel, Param};

/// A kernel compiled to native code; runs one program per call.
pub struct CpuKernel {
    name: String,
    params: Vec<Param>,
}

impl CpuKernel {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Runs program `program_id` of a grid of `num_programs`.
    ///
    /// # Safety
    /// `args` must match [`CpuKernel::params`] one to one, and every pointer must be valid for
    /// every element the program touches.
    pub unsafe fn run_program(
        &self,
        _args: &[u64],
        _program_id: [u32; 3],
        _num_programs: [u32; 3],
    ) {
        unimplemented!("cranelift backend")
    }
}

/// Compiles a kernel to native code for this machine.
pub fn compile(k: &Kernel) -> Result<CpuKernel, BackendError> {
    Err(BackendError {
        backend: "cranelift",
        kernel: k.name.clone(),
        message: "not implemented".into(),
    })
}

/// The Cranelift IR of a kernel, as text (`kiln compile --emit clif`).
pub fn emit_clif(k: &Kernel) -> Result<String, BackendError> {
    Err(BackendError {
        backend: "cranelift",
        kernel: k.name.clone(),
        message: "not implemented".into(),
    })
}

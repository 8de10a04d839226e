//! Running a grid of programs on the CPU.

use kiln_compiler::backend::cranelift::CpuKernel;
use rayon::prelude::*;

/// Runs every program of `grid` on the rayon thread pool and returns when all have finished.
///
/// # Safety
/// `args` must have been checked against the kernel's parameters ([`super::check_args`]) and
/// packed by [`super::pack`], and the buffers they point into must stay alive until this returns.
pub(crate) unsafe fn run(kernel: &CpuKernel, grid: [u32; 3], args: &[u64]) {
    let [gx, gy, gz] = grid.map(u64::from);
    let total = gx * gy * gz;
    (0..total).into_par_iter().for_each(|i| {
        // x varies fastest, as block indices do on a GPU.
        let program = [i % gx, i / gx % gy, i / (gx * gy)].map(|c| c as u32);
        // SAFETY: the caller's contract; every program id is inside `grid`.
        unsafe { kernel.run_program(args, program, grid) }
    });
}

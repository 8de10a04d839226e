//! Running a grid of programs on the CPU.

use kiln_compiler::backend::cranelift::CpuKernel;
use rayon::prelude::*;

/// Something that runs one program of a grid: a compiled kernel, or a stand-in in tests.
pub(crate) trait Program: Sync {
    /// # Safety
    /// As [`CpuKernel::run_program`].
    unsafe fn run_program(&self, args: &[u64], program_id: [u32; 3], num_programs: [u32; 3]);
}

impl Program for CpuKernel {
    unsafe fn run_program(&self, args: &[u64], program_id: [u32; 3], num_programs: [u32; 3]) {
        // SAFETY: the caller's contract is this function's. The only error is an argument count
        // mismatch, which `check_args` has already ruled out.
        let _ = unsafe { CpuKernel::run_program(self, args, program_id, num_programs) };
    }
}

/// Runs every program of `grid` once, on the rayon thread pool, and returns when all have
/// finished.
///
/// # Safety
/// `args` must have been checked against the kernel's parameters ([`super::check_args`]) and
/// packed by [`super::pack`], and the buffers they point into must stay alive until this returns.
pub(crate) unsafe fn run(kernel: &impl Program, grid: [u32; 3], args: &[u64]) {
    let [gx, gy, gz] = grid.map(u64::from);
    (0..gx * gy * gz).into_par_iter().for_each(|i| {
        // x varies fastest, as block indices do on a GPU.
        let program = [i % gx, i / gx % gy, i / (gx * gy)].map(|c| c as u32);
        // SAFETY: the caller's contract; every program id is inside `grid`.
        unsafe { kernel.run_program(args, program, grid) }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Counts how often each program of a grid runs.
    struct Census {
        grid: [u32; 3],
        runs: Vec<AtomicU32>,
    }

    impl Program for Census {
        unsafe fn run_program(&self, args: &[u64], id: [u32; 3], num_programs: [u32; 3]) {
            assert_eq!(args, [7, 8]);
            assert_eq!(num_programs, self.grid);
            let [x, y, z] = id.map(|c| c as usize);
            let [gx, gy, _] = self.grid.map(|c| c as usize);
            self.runs[(z * gy + y) * gx + x].fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn every_program_of_the_grid_runs_exactly_once() {
        for grid in [[1, 1, 1], [5, 1, 1], [3, 4, 1], [2, 3, 7], [1, 1, 9]] {
            let total = grid.iter().product::<u32>() as usize;
            let census = Census {
                grid,
                runs: (0..total).map(|_| AtomicU32::new(0)).collect(),
            };
            // SAFETY: the stand-in touches no memory through its arguments.
            unsafe { run(&census, grid, &[7, 8]) };
            assert!(
                census.runs.iter().all(|r| r.load(Ordering::Relaxed) == 1),
                "grid {grid:?}"
            );
        }
    }
}

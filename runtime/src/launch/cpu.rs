//! Running a grid of programs on the CPU: on the rayon pool, or on threads with stacks sized
//! for the kernel's tiles, collecting the first out-of-bounds access any program attempted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use kiln_compiler::backend::cranelift::{AccessFault, CpuKernel};
use rayon::prelude::*;

use crate::{Error, Result};

/// Something that runs one program of a grid: a compiled kernel, or a stand-in in tests.
pub(crate) trait Program: Sync {
    /// # Safety
    /// As [`CpuKernel::run_program`].
    unsafe fn run_program(
        &self,
        args: &[u64],
        bounds: &[u64],
        program_id: [u32; 3],
        num_programs: [u32; 3],
    ) -> Result<Option<AccessFault>>;

    /// Bytes of stack one program needs beyond a thread's usual use.
    fn frame_bytes(&self) -> u64;

    /// Whether the programs must run one after another in program order: a kernel whose
    /// programs add floats into the same memory (`atomic_add`) rounds by the order of the
    /// additions, and training on the CPU promises the same bits on every run.
    fn in_order(&self) -> bool {
        false
    }
}

impl Program for CpuKernel {
    unsafe fn run_program(
        &self,
        args: &[u64],
        bounds: &[u64],
        program_id: [u32; 3],
        num_programs: [u32; 3],
    ) -> Result<Option<AccessFault>> {
        // SAFETY: the caller's contract is this function's.
        Ok(unsafe { CpuKernel::run_program(self, args, bounds, program_id, num_programs)? })
    }

    fn frame_bytes(&self) -> u64 {
        CpuKernel::frame_bytes(self)
    }

    fn in_order(&self) -> bool {
        self.has_atomics()
    }
}

/// Frames up to this size run on the global rayon pool, whose threads have Rust's default
/// 2 MiB stacks; larger ones on a pool whose stacks are sized for them.
const SMALL_FRAME: u64 = 1 << 20;

/// The first fault of a grid, with the program that made it.
pub(crate) struct GridFault {
    pub program: [u32; 3],
    pub fault: AccessFault,
}

/// Runs every program of `grid` once and returns when all have finished; reports the fault of
/// the lowest-numbered faulting program, if any. Programs run in parallel, or one after another
/// in program order when the kernel asks for it ([`Program::in_order`]).
///
/// # Safety
/// `args` and `bounds` must have been bound to the kernel's parameters
/// ([`super::Args::bind`]), and the buffers they point into must stay alive until this
/// returns. A kernel without bounds checks must stay inside them by itself.
pub(crate) unsafe fn run(
    kernel: &impl Program,
    grid: [u32; 3],
    args: &[u64],
    bounds: &[u64],
) -> Result<Option<GridFault>> {
    let [gx, gy, gz] = grid.map(u64::from);
    let first: Mutex<Option<(u64, AccessFault)>> = Mutex::new(None);
    let one = |i: u64| {
        // x varies fastest, as block indices do on a GPU.
        let program = [i % gx, i / gx % gy, i / (gx * gy)].map(|c| c as u32);
        // SAFETY: the caller's contract; every program id is inside `grid`, and this
        // thread's stack fits the frame (`pool_for`).
        if let Some(fault) = unsafe { kernel.run_program(args, bounds, program, grid)? } {
            let mut first = first.lock().unwrap_or_else(PoisonError::into_inner);
            if first.is_none_or(|(j, _)| i < j) {
                *first = Some((i, fault));
            }
        }
        Ok::<(), Error>(())
    };
    let body = || {
        if kernel.in_order() {
            (0..gx * gy * gz).try_for_each(one)
        } else {
            (0..gx * gy * gz).into_par_iter().try_for_each(one)
        }
    };
    match pool_for(kernel.frame_bytes())? {
        None => body()?,
        Some(pool) => pool.install(body)?,
    }
    let first = first.into_inner().unwrap_or_else(PoisonError::into_inner);
    Ok(first.map(|(i, fault)| GridFault {
        program: [i % gx, i / gx % gy, i / (gx * gy)].map(|c| c as u32),
        fault,
    }))
}

/// A pool whose threads have room for `frame` bytes of tiles, or `None` for the global pool.
/// Pools are made once per power-of-two stack size and kept.
fn pool_for(frame: u64) -> Result<Option<Arc<rayon::ThreadPool>>> {
    if frame <= SMALL_FRAME {
        return Ok(None);
    }
    // Room for the frame, its probes and the runtime's own calls.
    let stack = (frame + SMALL_FRAME).next_power_of_two();
    static POOLS: OnceLock<Mutex<HashMap<u64, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(pool) = pools.get(&stack) {
        return Ok(Some(pool.clone()));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .stack_size(stack as usize)
        .thread_name(move |i| format!("kiln-cpu-{}MiB-{i}", stack >> 20))
        .build()
        .map_err(|e| Error::Unsupported(format!("threads with {stack}-byte stacks: {e}")))?;
    let pool = Arc::new(pool);
    pools.insert(stack, pool.clone());
    Ok(Some(pool))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_compiler::backend::cranelift::AccessKind;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Counts how often each program of a grid runs; programs listed in `faulty` fault.
    struct Census {
        grid: [u32; 3],
        runs: Vec<AtomicU32>,
        frame: u64,
        faulty: Vec<u64>,
    }

    impl Census {
        fn new(grid: [u32; 3], frame: u64, faulty: Vec<u64>) -> Census {
            let total = grid.iter().product::<u32>() as usize;
            Census {
                grid,
                runs: (0..total).map(|_| AtomicU32::new(0)).collect(),
                frame,
                faulty,
            }
        }
    }

    impl Program for Census {
        unsafe fn run_program(
            &self,
            args: &[u64],
            bounds: &[u64],
            id: [u32; 3],
            num_programs: [u32; 3],
        ) -> Result<Option<AccessFault>> {
            assert_eq!(args, [7, 8]);
            assert_eq!(bounds, [70, 80]);
            assert_eq!(num_programs, self.grid);
            let [x, y, z] = id.map(|c| c as usize);
            let [gx, gy, _] = self.grid.map(|c| c as usize);
            let linear = (z * gy + y) * gx + x;
            self.runs[linear].fetch_add(1, Ordering::Relaxed);
            Ok(self
                .faulty
                .contains(&(linear as u64))
                .then_some(AccessFault {
                    param: 1,
                    byte_offset: linear as i64,
                    kind: AccessKind::Store,
                }))
        }

        fn frame_bytes(&self) -> u64 {
            self.frame
        }
    }

    #[test]
    fn every_program_of_the_grid_runs_exactly_once() {
        for grid in [[1, 1, 1], [5, 1, 1], [3, 4, 1], [2, 3, 7], [1, 1, 9]] {
            for frame in [0, 64 << 20] {
                let census = Census::new(grid, frame, vec![]);
                // SAFETY: the stand-in touches no memory through its arguments.
                let fault = unsafe { run(&census, grid, &[7, 8], &[70, 80]) }.unwrap();
                assert!(fault.is_none());
                assert!(
                    census.runs.iter().all(|r| r.load(Ordering::Relaxed) == 1),
                    "grid {grid:?}"
                );
            }
        }
    }

    #[test]
    fn a_kernel_with_atomics_runs_its_programs_in_program_order() {
        /// Logs the order programs run in; asks to run in order, as an atomic kernel does.
        struct Ordered(Mutex<Vec<u64>>);
        impl Program for Ordered {
            unsafe fn run_program(
                &self,
                _: &[u64],
                _: &[u64],
                [x, y, z]: [u32; 3],
                [gx, gy, _]: [u32; 3],
            ) -> Result<Option<AccessFault>> {
                let linear = (u64::from(z) * u64::from(gy) + u64::from(y)) * u64::from(gx);
                self.0.lock().unwrap().push(linear + u64::from(x));
                Ok(None)
            }
            fn frame_bytes(&self) -> u64 {
                0
            }
            fn in_order(&self) -> bool {
                true
            }
        }
        let ordered = Ordered(Mutex::new(vec![]));
        // SAFETY: the stand-in touches no memory through its arguments.
        unsafe { run(&ordered, [5, 4, 3], &[], &[]) }.unwrap();
        assert_eq!(ordered.0.into_inner().unwrap(), (0..60).collect::<Vec<_>>());
    }

    #[test]
    fn the_lowest_faulting_program_is_reported() {
        let grid = [4, 3, 2];
        let census = Census::new(grid, 0, vec![23, 9, 17]);
        // SAFETY: as above.
        let fault = unsafe { run(&census, grid, &[7, 8], &[70, 80]) }
            .unwrap()
            .unwrap();
        // Program 9 is x 1, y 2, z 0.
        assert_eq!(fault.program, [1, 2, 0]);
        assert_eq!(fault.fault.byte_offset, 9);
    }

    #[test]
    fn a_big_frame_runs_on_threads_with_room_for_it() {
        /// Uses `frame` bytes of its own stack, as a kernel's tiles would.
        struct DeepStack;
        impl Program for DeepStack {
            unsafe fn run_program(
                &self,
                _: &[u64],
                _: &[u64],
                _: [u32; 3],
                _: [u32; 3],
            ) -> Result<Option<AccessFault>> {
                let tile = [1u8; 4 << 20];
                let tile = std::hint::black_box(tile);
                assert_eq!(tile.iter().map(|&b| u64::from(b)).sum::<u64>(), 4 << 20);
                Ok(None)
            }
            fn frame_bytes(&self) -> u64 {
                // Room for a copy or two of the array in unoptimised builds.
                16 << 20
            }
        }
        // SAFETY: as above.
        let fault = unsafe { run(&DeepStack, [4, 1, 1], &[], &[]) }.unwrap();
        assert!(fault.is_none());
    }
}

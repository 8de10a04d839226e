//! GEMM on a GPU through cuBLASLt: f32 accumulation, the bias added in the epilogue, queued on
//! the device's one stream.
//!
//! cuBLASLt is column-major. A row-major `[r, c]` matrix is the column-major `[c, r]` matrix
//! with leading dimension `c`, so row-major `C = op(A) @ op(B)` is column-major
//! `Cᵀ = op(B)ᵀ @ op(A)ᵀ`: B goes in as cuBLASLt's first operand and A as its second, each
//! with its own transpose flag. The bias, one value per column of C, is then one per row of
//! `Cᵀ`, which is how cuBLASLt broadcasts it.

mod desc;
mod load;
mod problem;
pub(crate) mod tune;

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Mutex, PoisonError};

use cudarc::cublaslt::result::{self, CublasError};
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, DevicePtr};
use kiln_compiler::DType;

use super::Gemm;
use crate::buffer::BufferView;
use crate::device::cuda::CudaDevice;
use crate::{Error, Result};
use desc::Preference;
use problem::Problem;

/// Scratch memory cuBLASLt's algorithms may use; what NVIDIA recommends for Hopper.
const WORKSPACE_BYTES: usize = 32 << 20;

/// NVIDIA documents no alignment for the epilogue's bias, but users report misaligned-address
/// faults below 16 bytes; a fault would poison the context, so such a bias is refused.
const BIAS_ALIGN: u64 = 16;

/// A device's cuBLASLt state, created by its first GEMM. The lock also keeps the shared
/// workspace to one matmul being queued at a time (the stream then runs them in order).
#[derive(Default)]
pub(crate) struct Slot(Mutex<Option<Box<Lt>>>);

struct Lt {
    handle: Handle,
    workspace: CudaSlice<u8>,
    /// The algorithm of each problem seen, and whether it is final (else the heuristic's pick
    /// while its class is being measured).
    algos: HashMap<Key, (sys::cublasLtMatmulAlgo_t, bool)>,
    tuning: tune::Tuning,
}

/// What the heuristic's choice depends on.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    mnk: [usize; 3],
    trans: [bool; 2],
    dtypes: [DType; 2],
    bias: Option<DType>,
    /// Alignments in bytes of A, B and C, up to 256.
    align: [u32; 3],
}

struct Handle(sys::cublasLtHandle_t);

// SAFETY: a cuBLASLt handle is not tied to a thread; `Slot`'s mutex serialises its use.
unsafe impl Send for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by `Lt::create`, destroyed only here.
        let _ = unsafe { result::destroy_handle(self.0) };
    }
}

/// Queues a checked product (see [`super::check`]) whose operands are on `device`.
pub(crate) fn run(
    device: &CudaDevice,
    spec: &Gemm,
    a: BufferView<'_>,
    b: BufferView<'_>,
    c: BufferView<'_>,
    bias: Option<BufferView<'_>>,
) -> Result<()> {
    // cuBLASLt found no algorithm on the H200 for a bias whose type differs from C's (bf16 C
    // with an f32 bias, f32 C with a bf16 bias): refuse it clearly instead.
    if let Some(bias) = bias.filter(|bias| bias.dtype() != c.dtype()) {
        return Err(spec.error(format!(
            "on a GPU the bias must have C's type ({}), not {}",
            c.dtype(),
            bias.dtype()
        )));
    }
    if let Some(bias) = bias.filter(|bias| bias.address() % BIAS_ALIGN != 0) {
        return Err(spec.error(format!(
            "on a GPU the bias must be {BIAS_ALIGN}-byte aligned for cuBLASLt's epilogue; \
             {bias:?} is not"
        )));
    }
    let mut slot = device
        .gemm_slot()
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let lt = match slot.as_mut() {
        Some(lt) => lt,
        None => slot.insert(Box::new(Lt::create(device)?)),
    };
    device
        .context()
        .bind_to_thread()
        .map_err(|e| Error::cuda("binding the CUDA context for cuBLASLt", e))?;
    lt.matmul(device, spec, &a, &b, &c, bias.as_ref())
}

impl Lt {
    fn create(device: &CudaDevice) -> Result<Lt> {
        load::ensure_loaded().map_err(|reason| Error::LibraryNotFound {
            library: "cuBLASLt",
            reason,
        })?;
        device
            .context()
            .bind_to_thread()
            .map_err(|e| Error::cuda("binding the CUDA context for cuBLASLt", e))?;
        let handle = result::create_handle().map_err(|e| Error::Cuda {
            context: "creating a cuBLASLt handle".into(),
            message: format!("{:?}", e.0),
        })?;
        let handle = Handle(handle);
        let workspace = device
            .stream()
            .alloc_zeros::<u8>(WORKSPACE_BYTES)
            .map_err(|e| Error::cuda("allocating the cuBLASLt workspace", e))?;
        Ok(Lt {
            handle,
            workspace,
            algos: HashMap::new(),
            tuning: tune::Tuning::default(),
        })
    }

    /// The heuristic's first `count` algorithms for `problem` that keep f32 sums, best ranked
    /// first.
    fn candidates(
        &self,
        spec: &Gemm,
        problem: &Problem,
        key: &Key,
        count: usize,
    ) -> Result<Vec<sys::cublasLtMatmulAlgo_t>> {
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        let [align_a, align_b, align_c] = key.align;
        let pref = Preference::new().map_err(|e| fail(spec, "preference", e))?;
        // cuBLASLt's A and B are our B and A.
        pref.set(
            P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &(WORKSPACE_BYTES as u64),
        )
        .and_then(|()| pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_b))
        .and_then(|()| pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_a))
        .and_then(|()| pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c))
        .and_then(|()| pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c))
        .map_err(|e| fail(spec, "preference", e))?;
        // Asked for as many as are measured even when fewer are wanted, since some are
        // refused below. SAFETY: all-zero is a valid bit pattern of these plain C structs, and
        // the library writes the first `found` of them.
        let asked = count.max(tune::CANDIDATES);
        let mut results: Vec<sys::cublasLtMatmulHeuristicResult_t> =
            vec![unsafe { std::mem::zeroed() }; asked];
        let mut found = 0;
        // SAFETY: every descriptor is live; the heuristic only reads them and writes at most
        // `asked` results.
        unsafe {
            sys::cublasLtMatmulAlgoGetHeuristic(
                self.handle.0,
                problem.desc.0,
                problem.first.0,
                problem.second.0,
                problem.out.0,
                problem.out.0,
                pref.0,
                asked as i32,
                results.as_mut_ptr(),
                &mut found,
            )
        }
        .result()
        .map_err(|e| fail(spec, "algorithm heuristic", e))?;
        let algos: Vec<_> = results
            .iter()
            .take(found.max(0) as usize)
            .filter(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
            .filter(|r| keeps_f32_sums(&r.algo, key.dtypes[1]))
            .map(|r| r.algo)
            .take(count)
            .collect();
        if algos.is_empty() {
            let what = "found no algorithm for these element types, alignments and epilogue";
            return Err(fail(
                spec,
                what,
                CublasError(sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED),
            ));
        }
        Ok(algos)
    }

    /// Whether cuBLASLt accepts `algo` for `problem` (a choice measured at another shape of
    /// its class may not apply).
    fn accepts(&self, problem: &Problem, algo: &sys::cublasLtMatmulAlgo_t) -> bool {
        // SAFETY: all-zero is a valid bit pattern of this plain C struct.
        let mut result: sys::cublasLtMatmulHeuristicResult_t = unsafe { std::mem::zeroed() };
        // SAFETY: every descriptor is live; the check only reads them and writes `result`.
        let status = unsafe {
            sys::cublasLtMatmulAlgoCheck(
                self.handle.0,
                problem.desc.0,
                problem.first.0,
                problem.second.0,
                problem.out.0,
                problem.out.0,
                algo,
                &mut result,
            )
        };
        status == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
            && result.workspaceSize <= WORKSPACE_BYTES
    }

    /// The algorithm `problem` runs with: its class's measured choice when there is one (and it
    /// applies), else the heuristic's first pick; on first sight of a class, its candidates
    /// are queued for measuring as well (see [`tune`]).
    fn algorithm(
        &mut self,
        device: &CudaDevice,
        spec: &Gemm,
        problem: &Problem,
        key: Key,
        operands: &Operands,
    ) -> Result<sys::cublasLtMatmulAlgo_t> {
        match self.algos.get(&key) {
            Some(&(algo, true)) => return Ok(algo),
            Some(&(first, false)) => {
                let class = tune::Class::of(&key);
                return Ok(match self.tuning.chosen(&class) {
                    Some(chosen) => {
                        let algo = if self.accepts(problem, &chosen) {
                            chosen
                        } else {
                            first
                        };
                        self.algos.insert(key, (algo, true));
                        algo
                    }
                    None => first,
                });
            }
            None => {}
        }
        let class = tune::Class::of(&key);
        if !tune::enabled() {
            let first = self.candidates(spec, problem, &key, 1)?[0];
            self.algos.insert(key, (first, true));
            return Ok(first);
        }
        if self.tuning.knows(&class) {
            // A new shape of a measured class starts with its own first pick and takes the
            // class's choice from its second product on: applying the choice at once measured
            // 140,565 tokens/s on packed variable lengths against 146,560 (H200, 2026-12-04,
            // one run each), where most shapes are seen once.
            let first = self.candidates(spec, problem, &key, 1)?[0];
            self.algos.insert(key, (first, false));
            return Ok(first);
        }
        let candidates = self.candidates(spec, problem, &key, tune::CANDIDATES)?;
        let first = candidates[0];
        let trials = match candidates.len() {
            1 => vec![],
            _ => self.queue_trials(device, spec, problem, operands, &candidates)?,
        };
        self.tuning.start(class, first, trials);
        self.algos.insert(key, (first, false));
        Ok(first)
    }

    /// Queues every candidate [`tune::RUNS`] times (after one unmeasured run) between two
    /// events; a candidate that fails to launch is left out. A product that overwrites its
    /// output (beta 0) is measured in place, as the product itself overwrites it next; one
    /// that adds to it writes a scratch output instead, and is not measured (no trials) when
    /// that would take more than [`tune::SCRATCH_MAX`] bytes.
    fn queue_trials(
        &self,
        device: &CudaDevice,
        spec: &Gemm,
        problem: &Problem,
        operands: &Operands,
        candidates: &[sys::cublasLtMatmulAlgo_t],
    ) -> Result<Vec<tune::Trial>> {
        let stream = device.stream();
        let scratch = match spec.beta {
            0.0 => None,
            _ if operands.out_bytes > tune::SCRATCH_MAX => return Ok(vec![]),
            // SAFETY: only written by the trials (and read by them: a timing does not depend
            // on the values); freed in stream order after them.
            _ => Some(
                unsafe { stream.alloc::<u8>(operands.out_bytes.max(1)) }
                    .map_err(|e| Error::cuda("allocating a GEMM's tuning output", e))?,
            ),
        };
        let trial_operands = match &scratch {
            Some(scratch) => Operands {
                out: scratch.device_ptr(stream).0,
                ..*operands
            },
            None => *operands,
        };
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut trials = vec![];
        for algo in candidates {
            if self
                .launch(device, spec, problem, algo, &trial_operands)
                .is_err()
            {
                continue;
            }
            let Ok(start) = stream.record_event(flags) else {
                continue;
            };
            let runs = (0..tune::RUNS)
                .try_for_each(|_| self.launch(device, spec, problem, algo, &trial_operands));
            if let (Ok(()), Ok(end)) = (runs, stream.record_event(flags)) {
                trials.push(tune::Trial {
                    algo: *algo,
                    start,
                    end,
                });
            }
        }
        Ok(trials)
    }

    /// Queues the product on the device's stream.
    fn matmul(
        &mut self,
        device: &CudaDevice,
        spec: &Gemm,
        a: &BufferView<'_>,
        b: &BufferView<'_>,
        c: &BufferView<'_>,
        bias: Option<&BufferView<'_>>,
    ) -> Result<()> {
        let problem = Problem::new(spec, a, b, c, bias)?;
        let key = Key {
            mnk: [spec.m, spec.n, spec.k],
            trans: [spec.trans_a, spec.trans_b],
            dtypes: [a.dtype(), c.dtype()],
            bias: bias.map(|bias| bias.dtype()),
            align: [a, b, c].map(|v| alignment(v.address())),
        };
        let operands = Operands {
            a: a.address(),
            b: b.address(),
            out: c.address(),
            out_bytes: spec.m * spec.n * c.dtype().size_bytes(),
        };
        let algo = self.algorithm(device, spec, &problem, key, &operands)?;
        self.launch(device, spec, &problem, &algo, &operands)
    }

    /// Queues the product with `algo`.
    fn launch(
        &self,
        device: &CudaDevice,
        spec: &Gemm,
        problem: &Problem,
        algo: &sys::cublasLtMatmulAlgo_t,
        operands: &Operands,
    ) -> Result<()> {
        let stream = device.stream();
        let (workspace, _guard) = self.workspace.device_ptr(stream);
        let ptr = |address: u64| address as *const c_void;
        // SAFETY: `check` fitted each view to its layout and kept C apart from A, B and the bias
        // (a tuning trial's output is scratch memory of C's size); the views' buffers are
        // borrowed for this call, and any later free of them is queued on this same stream,
        // after the matmul. C and D are one matrix (in place, one layout). `alpha` and `beta`
        // are host values, read before the call returns. The workspace is this device's, used
        // by one matmul at a time in stream order (the slot's lock).
        unsafe {
            result::matmul(
                self.handle.0,
                problem.desc.0,
                (&spec.alpha as *const f32).cast(),
                (&spec.beta as *const f32).cast(),
                ptr(operands.b),
                problem.first.0,
                ptr(operands.a),
                problem.second.0,
                ptr(operands.out),
                problem.out.0,
                operands.out as *mut c_void,
                problem.out.0,
                algo,
                workspace as *mut c_void,
                WORKSPACE_BYTES,
                stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|e| fail(spec, "matmul", e))
    }
}

/// Whether `algo` adds up its products in f32 all the way into an output of type `out`: a
/// split over k whose partial sums are stored or reduced in a bf16 output's own type rounds
/// every partial sum to bf16 (the H200 test of tuned products measured 2.7 bf16 ulps off).
fn keeps_f32_sums(algo: &sys::cublasLtMatmulAlgo_t, out: DType) -> bool {
    use sys::cublasLtReductionScheme_t as R;
    if out == DType::F32 {
        return true;
    }
    let mut scheme: u32 = 0;
    let mut written = 0usize;
    // SAFETY: reads one u32 attribute of a plain algorithm struct into a local of its size.
    let status = unsafe {
        sys::cublasLtMatmulAlgoConfigGetAttribute(
            algo,
            sys::cublasLtMatmulAlgoConfigAttributes_t::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME,
            (&mut scheme as *mut u32).cast(),
            std::mem::size_of::<u32>(),
            &mut written,
        )
    };
    status == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
        && (scheme == R::CUBLASLT_REDUCTION_SCHEME_NONE as u32
            || scheme == R::CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE as u32)
}

/// The device addresses of a product's operands (C and D are one matrix, `out`).
#[derive(Clone, Copy)]
struct Operands {
    a: u64,
    b: u64,
    out: u64,
    out_bytes: usize,
}

/// A cuBLASLt failure as a GEMM error naming the product and the status.
fn fail(spec: &Gemm, what: &str, e: CublasError) -> Error {
    spec.error(format!("cublasLt {what}: {:?}", e.0))
}

/// The largest power of two dividing `address`, up to cuBLASLt's default assumption of 256.
fn alignment(address: u64) -> u32 {
    1 << address.trailing_zeros().min(8)
}

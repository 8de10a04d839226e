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
pub(crate) struct Slot(Mutex<Option<Lt>>);

struct Lt {
    handle: Handle,
    workspace: CudaSlice<u8>,
    /// The heuristic's pick for each problem seen.
    algos: HashMap<Key, sys::cublasLtMatmulAlgo_t>,
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
        None => slot.insert(Lt::create(device)?),
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
        })
    }

    /// The heuristic's algorithm for `problem`, chosen on first sight of its key.
    fn algorithm(
        &mut self,
        spec: &Gemm,
        problem: &Problem,
        key: Key,
    ) -> Result<sys::cublasLtMatmulAlgo_t> {
        if let Some(algo) = self.algos.get(&key) {
            return Ok(*algo);
        }
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
        // SAFETY: every descriptor is live; the heuristic only reads them.
        let heuristic = unsafe {
            result::get_matmul_algo_heuristic(
                self.handle.0,
                problem.desc.0,
                problem.first.0,
                problem.second.0,
                problem.out.0,
                problem.out.0,
                pref.0,
            )
        }
        .map_err(|e| {
            let what = "found no algorithm for these element types, alignments and epilogue";
            fail(spec, what, e)
        })?;
        self.algos.insert(key, heuristic.algo);
        Ok(heuristic.algo)
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
        let algo = self.algorithm(spec, &problem, key)?;

        let stream = device.stream();
        let (workspace, _guard) = self.workspace.device_ptr(stream);
        let ptr = |v: &BufferView<'_>| v.address() as *const c_void;
        // SAFETY: `check` fitted each view to its layout and kept C apart from A, B and the bias;
        // the views' buffers are borrowed for this call, and any later free of them is queued
        // on this same stream, after the matmul. C and D are one matrix (in place, one layout).
        // `alpha` and `beta` are host values, read before the call returns. The workspace is
        // this device's, used by one matmul at a time in stream order (the slot's lock).
        unsafe {
            result::matmul(
                self.handle.0,
                problem.desc.0,
                (&spec.alpha as *const f32).cast(),
                (&spec.beta as *const f32).cast(),
                ptr(b),
                problem.first.0,
                ptr(a),
                problem.second.0,
                ptr(c),
                problem.out.0,
                c.address() as *mut c_void,
                problem.out.0,
                &algo,
                workspace as *mut c_void,
                WORKSPACE_BYTES,
                stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|e| fail(spec, "matmul", e))
    }
}

/// A cuBLASLt failure as a GEMM error naming the product and the status.
fn fail(spec: &Gemm, what: &str, e: CublasError) -> Error {
    spec.error(format!("cublasLt {what}: {:?}", e.0))
}

/// The largest power of two dividing `address`, up to cuBLASLt's default assumption of 256.
fn alignment(address: u64) -> u32 {
    1 << address.trailing_zeros().min(8)
}

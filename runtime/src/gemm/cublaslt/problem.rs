//! A row-major product described to cuBLASLt, which is column-major.

use cudarc::cublaslt::sys;
use kiln_compiler::DType;

use super::desc::{Layout, MatmulDesc};
use super::fail;
use crate::buffer::BufferView;
use crate::gemm::Gemm;
use crate::Result;

/// The operation and layouts of one product: `Cᵀ = op(B)ᵀ @ op(A)ᵀ` (see the module above).
pub(super) struct Problem {
    pub(super) desc: MatmulDesc,
    /// cuBLASLt's A: our B.
    pub(super) first: Layout,
    /// cuBLASLt's B: our A.
    pub(super) second: Layout,
    /// C and D, one matrix.
    pub(super) out: Layout,
}

impl Problem {
    pub(super) fn new(
        spec: &Gemm,
        a: &BufferView<'_>,
        b: &BufferView<'_>,
        c: &BufferView<'_>,
        bias: Option<&BufferView<'_>>,
    ) -> Result<Problem> {
        use sys::cublasLtMatmulDescAttributes_t as D;
        let desc = MatmulDesc::new().map_err(|e| fail(spec, "matmul descriptor", e))?;
        // 0 is N, 1 is T; the operands are swapped.
        desc.set(D::CUBLASLT_MATMUL_DESC_TRANSA, &i32::from(spec.trans_b))
            .and_then(|()| desc.set(D::CUBLASLT_MATMUL_DESC_TRANSB, &i32::from(spec.trans_a)))
            .map_err(|e| fail(spec, "transposes", e))?;
        if let Some(bias) = bias {
            let epilogue = sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
            desc.set(D::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue)
                .and_then(|()| desc.set(D::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias.address()))
                // By default the bias has D's type; say so only when it differs.
                .and_then(|()| match bias.dtype() == c.dtype() {
                    true => Ok(()),
                    false => desc.set(
                        D::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                        &data_type(bias.dtype()),
                    ),
                })
                .map_err(|e| fail(spec, "bias epilogue", e))?;
        }
        // A row-major [rows, cols] matrix is a column-major [cols, rows] one, `cols` apart.
        let column_major = |dtype: DType, [rows, cols]: [usize; 2]| {
            Layout::new(data_type(dtype), cols, rows, cols)
                .map_err(|e| fail(spec, "matrix layout", e))
        };
        Ok(Problem {
            desc,
            first: column_major(b.dtype(), spec.b_shape())?,
            second: column_major(a.dtype(), spec.a_shape())?,
            out: column_major(c.dtype(), spec.c_shape())?,
        })
    }
}

fn data_type(dtype: DType) -> sys::cudaDataType {
    match dtype {
        DType::Bf16 => sys::cudaDataType::CUDA_R_16BF,
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        other => unreachable!("gemm::check admits no {other} operand"),
    }
}

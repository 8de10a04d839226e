//! Owned cuBLASLt descriptors, destroyed on drop.

use std::ffi::c_void;
use std::mem::size_of;

use cudarc::cublaslt::result::{self, CublasError};
use cudarc::cublaslt::sys;

/// An operation descriptor: compute and scale types, transposes, epilogue.
pub(super) struct MatmulDesc(pub(super) sys::cublasLtMatmulDesc_t);

impl MatmulDesc {
    /// f32 compute and f32 `alpha`/`beta`.
    pub(super) fn new() -> Result<MatmulDesc, CublasError> {
        result::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map(MatmulDesc)
    }

    /// Sets `attr` to `value`, whose type must be the attribute's (the library checks the size).
    pub(super) fn set<T: Copy>(
        &self,
        attr: sys::cublasLtMatmulDescAttributes_t,
        value: &T,
    ) -> Result<(), CublasError> {
        let buf = (value as *const T).cast::<c_void>();
        // SAFETY: the descriptor is live; the library reads `size_of::<T>()` bytes of `value`.
        unsafe { result::set_matmul_desc_attribute(self.0, attr, buf, size_of::<T>()) }
    }
}

impl Drop for MatmulDesc {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed only here.
        let _ = unsafe { result::destroy_matmul_desc(self.0) };
    }
}

/// A column-major matrix layout.
pub(super) struct Layout(pub(super) sys::cublasLtMatrixLayout_t);

impl Layout {
    pub(super) fn new(
        dtype: sys::cudaDataType,
        rows: usize,
        cols: usize,
        ld: usize,
    ) -> Result<Layout, CublasError> {
        result::create_matrix_layout(dtype, rows as u64, cols as u64, ld as i64).map(Layout)
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed only here.
        let _ = unsafe { result::destroy_matrix_layout(self.0) };
    }
}

/// Preferences for the algorithm heuristic: workspace limit, operand alignments.
pub(super) struct Preference(pub(super) sys::cublasLtMatmulPreference_t);

impl Preference {
    pub(super) fn new() -> Result<Preference, CublasError> {
        result::create_matmul_pref().map(Preference)
    }

    /// Sets `attr` to `value`, whose type must be the attribute's (the library checks the size).
    pub(super) fn set<T: Copy>(
        &self,
        attr: sys::cublasLtMatmulPreferenceAttributes_t,
        value: &T,
    ) -> Result<(), CublasError> {
        let buf = (value as *const T).cast::<c_void>();
        // SAFETY: the preference is live; the library reads `size_of::<T>()` bytes of `value`.
        unsafe { result::set_matmul_pref_attribute(self.0, attr, buf, size_of::<T>()) }
    }
}

impl Drop for Preference {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed only here.
        let _ = unsafe { result::destroy_matmul_pref(self.0) };
    }
}

//! Finding the cuBLASLt library at run time.
//!
//! cudarc's dynamic loading `dlopen`s cuBLASLt by bare names derived from its CUDA version
//! feature: with `cuda-13000`, `libcublasLt.so`, then versioned names among which
//! `libcublasLt.so.13` and `libcublasLt.so.12`. A bare name is only found on the loader's path
//! (`LD_LIBRARY_PATH`, the ldconfig cache), which often lacks `/usr/local/cuda/lib64`. So when
//! cudarc finds nothing, the library is loaded here by full path from the usual CUDA
//! directories and kept loaded: glibc's `dlopen` then resolves cudarc's bare name to it through
//! its soname.

use std::path::PathBuf;
use std::sync::OnceLock;

use cudarc::cublaslt::sys;

/// The sonames loaded by full path, newest first. cudarc's `cuda-13000` bindings ask for both.
const SONAMES: [&str; 2] = ["libcublasLt.so.13", "libcublasLt.so.12"];

/// Every cuBLASLt function this crate calls: checked up front, as cudarc panics on a missing
/// symbol at its first call.
const SYMBOLS: [&str; 14] = [
    "cublasLtCreate",
    "cublasLtDestroy",
    "cublasLtMatmulDescCreate",
    "cublasLtMatmulDescSetAttribute",
    "cublasLtMatmulDescDestroy",
    "cublasLtMatrixLayoutCreate",
    "cublasLtMatrixLayoutDestroy",
    "cublasLtMatmulPreferenceCreate",
    "cublasLtMatmulPreferenceSetAttribute",
    "cublasLtMatmulPreferenceDestroy",
    "cublasLtMatmulAlgoGetHeuristic",
    "cublasLtMatmulAlgoCheck",
    "cublasLtMatmulAlgoConfigGetAttribute",
    "cublasLtMatmul",
];

/// Makes cuBLASLt loadable through cudarc, or says why it cannot be. Decided once per process.
pub(super) fn ensure_loaded() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED.get_or_init(load).clone()
}

fn load() -> Result<(), String> {
    // SAFETY: only `dlopen`s (and closes) cuBLASLt by cudarc's candidate names.
    if !unsafe { sys::is_culib_present() } {
        let dirs = search_dirs();
        let loaded = dirs
            .iter()
            .flat_map(|dir| SONAMES.map(|name| dir.join(name)))
            .filter(|path| path.is_file())
            // SAFETY: loading cuBLASLt runs only its initialisers, which have no preconditions.
            .find_map(|path| unsafe { libloading::Library::new(&path) }.ok());
        let Some(library) = loaded else {
            return Err(format!(
                "none of cudarc's names for it (libcublasLt.so, libcublasLt.so.13, ...) is on \
                 the loader path (LD_LIBRARY_PATH, ldconfig), and no {} is in {}",
                SONAMES.join(" or "),
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        // Kept loaded for the life of the process, so cudarc's `dlopen` finds it.
        std::mem::forget(library);
        // SAFETY: as above.
        if !unsafe { sys::is_culib_present() } {
            return Err("a cuBLASLt loaded by full path is not found by its soname".into());
        }
    }
    // SAFETY: the library is present (checked above), so `culib` loads it instead of panicking.
    let library = unsafe { sys::culib() };
    let missing: Vec<&str> = SYMBOLS
        .into_iter()
        // SAFETY: only looks the symbol up; the pointer is never called through this type.
        .filter(|name| unsafe { library.get::<*const ()>(name.as_bytes()) }.is_err())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the cuBLASLt found lacks {} (too old?)",
            missing.join(", ")
        ));
    }
    Ok(())
}

/// `$CUDA_HOME/lib64` and the like, then `/usr/local/cuda/lib64`.
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"]
        .into_iter()
        .filter_map(std::env::var_os)
        .map(|root| PathBuf::from(root).join("lib64"))
        .collect();
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    dirs.dedup();
    dirs
}

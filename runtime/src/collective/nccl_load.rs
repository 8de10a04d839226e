//! Finding NCCL at run time.
//!
//! cudarc's dynamic loading `dlopen`s NCCL by bare names (`libnccl.so`, then versioned names
//! ending `.so.13`, `.so.12`, ...), none of which is `libnccl.so.2`, the only name the NCCL
//! wheel PyTorch depends on ships (`site-packages/nvidia/nccl/lib/`). A library loaded by
//! full path does not help, as glibc matches bare names by soname. So where cudarc finds
//! nothing, [`nccl_link_dir`] makes a directory with a `libnccl.so` link to the `libnccl.so.2`
//! it finds, for the loader path of processes yet to start (`kiln train --gpus N` puts it on
//! its ranks' `LD_LIBRARY_PATH`), and [`nccl_library`] says how to do the same by hand.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cudarc::nccl::sys;

/// Points at `libnccl.so.2` (the file, or the directory holding it).
pub const NCCL_LIB_VAR: &str = "KILN_NCCL_LIB";
const SONAME: &str = "libnccl.so.2";

/// Whether cudarc can load NCCL in this process, or why not (where a `libnccl.so.2` was
/// found, and what to put on `LD_LIBRARY_PATH`). Decided once per process.
pub fn nccl_library() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            // SAFETY: only `dlopen`s (and closes) NCCL by cudarc's candidate names.
            if unsafe { sys::is_culib_present() } {
                return Ok(());
            }
            Err(match find_soname() {
                Some(found) => format!(
                    "{} exists, but NCCL is loaded by the names libnccl.so, libnccl.so.13, ... \
                     on the loader path: start the process with a directory holding a \
                     `libnccl.so` link to it on LD_LIBRARY_PATH (`kiln train --gpus N` does \
                     that for its ranks; scripts/gpu-check shows how)",
                    found.display()
                ),
                None => format!(
                    "no libnccl.so on the loader path and no {SONAME} in {} (set {NCCL_LIB_VAR} \
                     to it; `pip install nvidia-nccl-cu12` or PyTorch ships one)",
                    search_dirs()
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
        })
        .clone()
}

/// A directory to put on the loader path of processes about to start so that cudarc finds
/// NCCL there: `None` when it already does (or no NCCL is found: those processes will say
/// so), else a cache directory holding a `libnccl.so` link to the `libnccl.so.2` found.
pub fn nccl_link_dir() -> std::io::Result<Option<PathBuf>> {
    // SAFETY: as in `nccl_library`.
    if unsafe { sys::is_culib_present() } {
        return Ok(None);
    }
    let Some(found) = find_soname() else {
        return Ok(None);
    };
    let base = dirs::cache_dir().unwrap_or_else(std::env::temp_dir);
    let dir = base.join("kiln").join("nccl");
    std::fs::create_dir_all(&dir)?;
    let link = dir.join("libnccl.so");
    if std::fs::read_link(&link).ok().as_deref() != Some(found.as_path()) {
        // Replaced through a temporary name, so concurrent launchers never see no link.
        let tmp = dir.join(format!("libnccl.so.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&found, &tmp)?;
        std::fs::rename(&tmp, &link)?;
    }
    Ok(Some(dir))
}

/// The first `libnccl.so.2` of [`search_dirs`].
fn find_soname() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(NCCL_LIB_VAR).map(PathBuf::from) {
        if p.is_file() {
            return Some(p);
        }
    }
    search_dirs()
        .into_iter()
        .map(|d| d.join(SONAME))
        .find(|p| p.is_file())
}

/// Where `libnccl.so.2` is looked for: `KILN_NCCL_LIB`, `LD_LIBRARY_PATH`, the NCCL wheel's
/// directory in the Python environments usual on GPU machines, and the system's.
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = vec![];
    if let Some(p) = std::env::var_os(NCCL_LIB_VAR) {
        dirs.push(PathBuf::from(p));
    }
    if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&paths));
    }
    let mut prefixes: Vec<PathBuf> = ["VIRTUAL_ENV", "CONDA_PREFIX"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .collect();
    prefixes.extend(["/usr/local", "/usr", "/opt/conda"].map(PathBuf::from));
    if let Some(home) = dirs::home_dir() {
        prefixes.push(home.join(".local"));
    }
    for prefix in prefixes {
        for python in pythons(&prefix.join("lib")) {
            for packages in ["site-packages", "dist-packages"] {
                dirs.push(python.join(packages).join("nvidia/nccl/lib"));
            }
        }
    }
    dirs.extend(
        [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/local/cuda/lib64",
            "/usr/local/nccl/lib",
        ]
        .map(PathBuf::from),
    );
    dirs
}

/// `lib/python3.*` directories under `lib`.
fn pythons(lib: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(lib) else {
        return vec![];
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

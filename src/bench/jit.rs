//! `kiln bench jit`: how long the JIT takes to make every shipped kernel launchable on a GPU.
//!
//! Cold: an empty disk cache, so each kernel goes source → AST → IR → passes → LLVM → PTX →
//! written to disk → loaded as a module. Warm: a new cache over the same directory, as a fresh
//! process would start, so each kernel is read from disk and loaded. The driver's own
//! PTX-to-SASS cache is on unless `CUDA_CACHE_DISABLE=1` is set; the table says which.

use super::gpu::err;
use kiln::compiler::ir::ParamKind;
use kiln::compiler::{Defines, Source};
use kiln::runtime::{Device, KernelCache, KernelSpec, Specialization};
use std::time::Instant;

/// Every kernel of every shipped file, at its default constants, with the specialisation a
/// real launch on fresh buffers gets (all pointers 16-byte aligned).
fn kernel_set() -> Result<Vec<(Source, String, Specialization)>, String> {
    let mut set = vec![];
    for file in kiln::ops::kernels::ALL {
        let source = Source::new(file.name, file.source);
        let kernels = kiln::compiler::check(&source, &Defines::new()).map_err(|e| e.to_string())?;
        for k in kernels {
            let divisible_by_16 = k
                .params
                .iter()
                .enumerate()
                .filter(|(_, p)| matches!(p.kind, ParamKind::Ptr { .. }))
                .fold(0u64, |mask, (i, _)| mask | 1 << i);
            set.push((
                source.clone(),
                k.name.clone(),
                Specialization { divisible_by_16 },
            ));
        }
    }
    Ok(set)
}

/// Loads the whole set through `cache`; returns per-kernel and total milliseconds.
fn load_all(
    cache: &KernelCache,
    dev: &Device,
    set: &[(Source, String, Specialization)],
) -> Result<(Vec<f64>, f64), String> {
    let start = Instant::now();
    let mut each = vec![];
    for (source, name, specialization) in set {
        let t = Instant::now();
        cache
            .kernel(dev, &KernelSpec::new(source, name), specialization)
            .map_err(err)?;
        each.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((each, start.elapsed().as_secs_f64() * 1e3))
}

/// Measures cold and warm latency on CUDA device 0 and returns a table.
pub fn run() -> Result<String, String> {
    let dev = Device::cuda(0).map_err(err)?;
    let set = kernel_set()?;
    let dir = std::env::temp_dir().join(format!("kiln-bench-jit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    let cold_cache = KernelCache::with_dir(&dir);
    let (cold, cold_total) = load_all(&cold_cache, &dev, &set)?;
    let warm_cache = KernelCache::with_dir(&dir);
    let (warm, warm_total) = load_all(&warm_cache, &dev, &set)?;
    let stats = warm_cache.stats();
    let _ = std::fs::remove_dir_all(&dir);
    if stats.disk_hits != set.len() as u64 {
        return Err(format!(
            "warm start found {} of {} kernels on disk",
            stats.disk_hits,
            set.len()
        ));
    }

    let driver_cache = match std::env::var("CUDA_CACHE_DISABLE").as_deref() {
        Ok("1") => "off (CUDA_CACHE_DISABLE=1)",
        _ => "on",
    };
    let mut out = format!(
        "JIT latency on {} ({}); driver PTX cache {driver_cache}\n",
        dev.name(),
        dev
    );
    out += "| kernel | cold ms (source to loaded module) | warm ms (disk cache to loaded module) |\n|---|---|---|\n";
    for (((source, name, _), c), w) in set.iter().zip(&cold).zip(&warm) {
        out += &format!("| {} `{name}` | {c:.1} | {w:.2} |\n", source.name);
    }
    out += &format!(
        "| whole set ({} kernels) | {cold_total:.1} | {warm_total:.2} |\n",
        set.len()
    );
    Ok(out)
}

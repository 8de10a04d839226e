//! `kiln bench jit`: how long the JIT takes to make every shipped kernel launchable on a GPU.
//!
//! Cold: an empty disk cache, so each kernel goes source → AST → IR → passes → LLVM → PTX →
//! cubin (the driver's assembler) → written to disk → loaded as a module. Warm: a new cache
//! over the same directory, as a fresh process would start, so each kernel's cubin is read from
//! disk and loaded. Each is measured one kernel after another, and for the whole set at once
//! with [`KernelCache::kernels`] (in parallel over the cores). Set `CUDA_CACHE_DISABLE=1` so
//! the driver's own JIT cache cannot help; the table says whether it was.

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

/// Loads the whole set through `cache` at once, in parallel; returns milliseconds.
fn load_parallel(
    cache: &KernelCache,
    dev: &Device,
    set: &[(Source, String, Specialization)],
) -> Result<f64, String> {
    let requests: Vec<_> = set
        .iter()
        .map(|(source, name, specialization)| (KernelSpec::new(source, name), *specialization))
        .collect();
    let start = Instant::now();
    cache.kernels(dev, &requests).map_err(err)?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

/// A fresh directory for one cache.
fn fresh_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-bench-jit-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn expect_all_on_disk(cache: &KernelCache, count: usize) -> Result<(), String> {
    let hits = cache.stats().disk_hits;
    if hits != count as u64 {
        return Err(format!(
            "warm start found {hits} of {count} kernels on disk"
        ));
    }
    Ok(())
}

/// Measures cold and warm latency on CUDA device 0 and returns a table.
pub fn run() -> Result<String, String> {
    let dev = Device::cuda(0).map_err(err)?;
    let set = kernel_set()?;

    let dir = fresh_dir("serial");
    let (cold, cold_total) = load_all(&KernelCache::with_dir(&dir), &dev, &set)?;
    let warm_cache = KernelCache::with_dir(&dir);
    let (warm, warm_total) = load_all(&warm_cache, &dev, &set)?;
    expect_all_on_disk(&warm_cache, set.len())?;

    let par_dir = fresh_dir("parallel");
    let cold_parallel = load_parallel(&KernelCache::with_dir(&par_dir), &dev, &set)?;
    let warm_cache = KernelCache::with_dir(&par_dir);
    let warm_parallel = load_parallel(&warm_cache, &dev, &set)?;
    expect_all_on_disk(&warm_cache, set.len())?;
    for d in [dir, par_dir] {
        let _ = std::fs::remove_dir_all(d);
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
        "| whole set ({} kernels), one after another | {cold_total:.1} | {warm_total:.2} |\n",
        set.len()
    );
    out += &format!(
        "| whole set, `KernelCache::kernels` on {} threads | {cold_parallel:.1} | {warm_parallel:.2} |\n",
        rayon::current_num_threads()
    );
    Ok(out)
}

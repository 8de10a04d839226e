//! Integration tests of kiln-runtime. GPU tests print "skipped: no CUDA device" without one.

mod args;
mod buffer;
mod cache_key;
mod collective;
#[cfg(feature = "cuda")]
mod cuda;
mod device;
mod disk;
mod end_to_end;
mod gemm;
mod kernel_cache;
mod safety;

use kiln_runtime::Device;

/// The CUDA device 0, or `None` after printing why the calling test skips its GPU part.
pub fn cuda_or_skip(test: &str) -> Option<Device> {
    match Device::cuda(0) {
        Ok(device) => Some(device),
        Err(e) => {
            println!("{test}: skipped: no CUDA device ({e})");
            None
        }
    }
}

/// The CPU, and the GPU when there is one.
pub fn devices(test: &str) -> Vec<Device> {
    let mut all = vec![Device::cpu()];
    all.extend(cuda_or_skip(test));
    all
}

//! The kiln-models integration tests: one binary, one module per part of the crate.
//!
//! The tests that compare against Hugging Face's numbers and the trainer's invariants run on
//! every device ([`devices`]): the CPU always, CUDA device 0 where there is one (without one they
//! print "skipped: no CUDA device" for their GPU part). Away from its checkout (on the GPU
//! machine) the binary finds the fixtures under `KILN_SOURCE_DIR`.

mod config;
mod cross_device;
mod data;
mod data_parallel;
mod export;
mod gguf;
mod hf;
mod lora;
mod model;
mod smollm2;
mod tokenizer;
mod train;
mod weights;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use kiln_ops::Ops;
use kiln_runtime::Device;

/// The repository's root: `KILN_SOURCE_DIR` where it is set, else the checkout this binary was
/// built from.
pub fn repo_root() -> PathBuf {
    match std::env::var_os("KILN_SOURCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
    }
}

/// CUDA device 0's `Ops`, opened once for every test, or why there is none.
pub fn cuda_ops() -> Result<Arc<Ops>, String> {
    static OPS: OnceLock<Result<Arc<Ops>, String>> = OnceLock::new();
    OPS.get_or_init(|| {
        Device::cuda(0)
            .map(|d| Arc::new(Ops::new(d)))
            .map_err(|e| e.to_string())
    })
    .clone()
}

/// The devices `test` runs on: the CPU, then CUDA device 0 where there is one (else it prints
/// that its GPU part is skipped).
pub fn devices(test: &str) -> Vec<Arc<Ops>> {
    let mut all = vec![hf::cpu_ops()];
    match cuda_ops() {
        Ok(ops) => all.push(ops),
        Err(e) => println!("{test}: skipped: no CUDA device ({e})"),
    }
    all
}

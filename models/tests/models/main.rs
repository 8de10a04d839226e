//! The kiln-models integration tests: one binary, one module per part of the crate.

mod config;
mod gguf;
mod hf;
mod lora;
mod model;
mod smollm2;
mod tokenizer;
mod weights;

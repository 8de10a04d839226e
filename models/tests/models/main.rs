//! The kiln-models integration tests: one binary, one module per part of the crate.

mod config;
mod gguf;
mod tokenizer;
mod weights;
mod hf;
mod model;
mod lora;
mod smollm2;

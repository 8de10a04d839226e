//! The kiln-models integration tests: one binary, one module per part of the crate.

mod config;
mod data;
mod export;
mod gguf;
mod hf;
mod lora;
mod model;
mod smollm2;
mod tokenizer;
mod train;
mod weights;

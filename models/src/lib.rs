//! # kiln-models
//!
//! Language models built from Kiln ops: Hugging Face configs and safetensors weights, GGUF
//! import, tokenizers and chat templates, Qwen2 and Llama blocks with explicit forward and
//! backward passes, generation with a KV cache, and evaluation.

pub mod config;
mod error;
pub mod gguf;
mod host;
pub mod tokenizer;
pub mod weights;

pub use config::ModelConfig;
pub use error::{Error, Result};
pub use host::HostTensor;
pub use tokenizer::{ChatMessage, Tokenizer};
pub use weights::SafeTensors;

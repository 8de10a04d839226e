//! # kiln-models
//!
//! Language models built from Kiln ops: Hugging Face configs and safetensors weights, GGUF
//! import, tokenizers and chat templates, Qwen2 and Llama blocks with explicit forward and
//! backward passes, generation with a KV cache, and evaluation.
//!
//! ```no_run
//! use std::sync::Arc;
//! use kiln_models::batch::{Batch, Sequence};
//! use kiln_models::model::{Model, Pass};
//! use kiln_models::precision::Precision;
//! # fn main() -> kiln_models::Result<()> {
//! let ops = Arc::new(kiln_ops::Ops::new(kiln_runtime::Device::cpu()));
//! let model = Model::load("SmolLM2-135M-Instruct", ops, Precision::Bf16)?;
//! let batch = Batch::pack(&[&Sequence::new(vec![1, 2, 3, 4])], model.config.vocab)?;
//! let batch = batch.upload(model.ops())?;
//! let forward = model.forward(&batch, Pass::Train)?;
//! let mut grads = model.zero_gradients()?;
//! println!("loss {}", forward.loss);
//! model.backward(&batch, forward, 1.0, &mut grads)?; // grads += d(mean loss)/dθ
//! # Ok(()) }
//! ```

pub mod adapters;
pub mod atomic;
pub mod batch;
pub mod block;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod data_parallel;
pub mod data_plan;
mod error;
pub mod eval;
pub mod export;
pub mod generate;
pub mod gguf;
mod host;
pub mod layers;
pub mod lora;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod packing;
pub mod params;
pub mod precision;
pub mod random_init;
pub mod rng;
pub mod task;
pub mod tokenizer;
pub mod trainer;
pub mod weights;

pub use config::ModelConfig;
pub use error::{Error, Result};
pub use host::HostTensor;
pub use model::{Model, Pass};
pub use precision::Precision;
pub use tokenizer::{ChatMessage, Tokenizer};
pub use weights::SafeTensors;

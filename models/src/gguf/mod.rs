//! GGUF import: read llama.cpp's GGUF files (header, metadata, tensor infos, data), dequantize
//! their tensors to f32, and turn a Llama or Qwen2 model into a Hugging Face folder
//! (`config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`,
//! `generation_config.json`).
//!
//! ```no_run
//! use kiln_models::gguf::GgufFile;
//! let file = GgufFile::open("model.gguf")?;
//! println!("{}", file.architecture()?);
//! for t in file.tensors() {
//!     println!("{} {:?} {}", t.name, t.shape(), t.ggml_type);
//! }
//! let embed = file.dequantize("token_embd.weight")?;
//! # Ok::<(), kiln_models::Error>(())
//! ```

mod config;
mod dequant;
mod import;
mod metadata;
mod names;
mod reader;
mod tokenizer;
mod types;

pub use config::GgufModelConfig;
pub use import::{import, ImportReport, MARKER};
pub use names::{hf_name, unpermute_qk, Arch, HfName, QkRole};
pub use tokenizer::{build as build_tokenizer, GgufTokenizer};

pub use dequant::{dequantize, f16_to_f32, DequantError};
pub use metadata::{Metadata, MetadataValue};
pub use reader::{GgufFile, TensorInfo, DEFAULT_ALIGNMENT};
pub use types::{GgmlType, DEQUANTIZABLE};

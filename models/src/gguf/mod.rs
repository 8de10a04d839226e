//! GGUF import and export: read llama.cpp's GGUF files (header, metadata, tensor infos, data),
//! dequantize their tensors to f32, and turn a Llama or Qwen2 model into a Hugging Face folder
//! (`config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`,
//! `generation_config.json`); and the way back: write GGUF v3 files (F32, F16, BF16, Q8_0
//! tensors) and export a Hugging Face folder as the GGUF file llama.cpp's converter makes of it.
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
mod export;
mod hf_tokenizer;
mod import;
mod metadata;
mod names;
mod quantize;
mod reader;
mod tokenizer;
mod types;
mod writer;

pub use config::GgufModelConfig;
pub use export::{export, tensor_type, GgufExport, GgufExportReport, EXPORT_TYPES};
pub use hf_tokenizer::{tokenizer_metadata, TokenizerMetadata};
pub use import::{import, ImportReport, MARKER};
pub use names::{gguf_name, hf_name, permute_qk, unpermute_qk, Arch, HfName, QkRole};
pub use quantize::{f32_to_bf16, f32_to_f16, quantize, QuantizeError, ENCODABLE};
pub use tokenizer::{build as build_tokenizer, GgufTokenizer};
pub use writer::{write, TensorData, WriteReport, WriteTensor, VERSION};

pub use dequant::{dequantize, f16_to_f32, DequantError};
pub use metadata::{Metadata, MetadataValue};
pub use reader::{GgufFile, TensorInfo, DEFAULT_ALIGNMENT};
pub use types::{GgmlType, DEQUANTIZABLE};

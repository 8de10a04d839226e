//! [`GgufExport`]: a Hugging Face Llama, Mistral or Qwen2 model (its `config.json`, its tensors,
//! its tokenizer files) as one GGUF file that llama.cpp runs, written the way llama.cpp's
//! convert_hf_to_gguf.py writes one; the inverse of [`super::import`].
//!
//! - `general.architecture` `llama` (Llama and Mistral) or `qwen2`, and the hyperparameters
//!   under that prefix (`block_count`, `context_length`, `embedding_length`, ...).
//! - llama.cpp's tensor names; no `output.weight` when the embeddings are tied; Llama's Q/K
//!   rows permuted for GGML's rope (Qwen2's are not).
//! - 1-D tensors (norms, biases) in F32, as llama.cpp keeps them; the matrices in the type
//!   asked for, except that Q8_0 falls back to F16 for rows that are not whole blocks of 32.
//! - The tokenizer as [`super::hf_tokenizer`] writes it, when the folder has a
//!   `tokenizer.json`.
//!
//! Everything is checked when the export is planned, before a byte is written.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::hf_tokenizer::{tokenizer_metadata, TokenizerMetadata};
use super::metadata::MetadataValue;
use super::names::{gguf_name, permute_qk};
use super::reader::DEFAULT_ALIGNMENT;
use super::types::GgmlType;
use super::writer::{self, TensorData, WriteTensor};
use crate::config::{Architecture, ModelConfig};
use crate::weights::SafeTensors;
use crate::{Error, HostTensor, Result};

/// The types the matrices of an export can be written in.
pub const EXPORT_TYPES: &[GgmlType] =
    &[GgmlType::F32, GgmlType::F16, GgmlType::Bf16, GgmlType::Q8_0];

/// llama.cpp's `general.quantization_version` (`GGML_QUANT_VERSION`).
const QUANT_VERSION: u32 = 2;

/// What [`GgufExport::write`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufExportReport {
    /// The file written.
    pub path: PathBuf,
    /// `general.architecture`.
    pub architecture: &'static str,
    /// The number of tensors.
    pub tensors: usize,
    /// How many tensors of each type (`F16` → 14).
    pub tensor_types: BTreeMap<String, usize>,
    /// The file's length.
    pub bytes: u64,
    /// The number of metadata pairs.
    pub metadata: usize,
    /// The tokenizer written, if the folder had one.
    pub tokenizer: Option<TokenizerMetadata>,
}

/// One tensor of the file: its llama.cpp name, shape, type and f32 values (permuted for Q/K).
struct Planned<'a> {
    name: String,
    shape: Vec<usize>,
    ggml_type: GgmlType,
    values: Cow<'a, [f32]>,
}

/// A checked export: the metadata and tensors of the file, ready to write.
pub struct GgufExport<'a> {
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<Planned<'a>>,
    architecture: &'static str,
    tokenizer: Option<TokenizerMetadata>,
}

/// `general.file_type` (llama.cpp's `LlamaFileType`) of an export in `ty`.
fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q8_0 => 7,
        _ => 32, // BF16
    }
}

/// The type llama.cpp's converter gives a tensor of `shape` when asked for `ty`: F32 for 1-D
/// tensors, F16 for Q8_0 rows that are not whole blocks.
pub fn tensor_type(shape: &[usize], ty: GgmlType) -> GgmlType {
    if shape.len() <= 1 {
        return GgmlType::F32;
    }
    let row = shape.last().copied().unwrap_or(0);
    if row % ty.block_size() as usize != 0 {
        return GgmlType::F16;
    }
    ty
}

impl<'a> GgufExport<'a> {
    /// Plans the export of the model whose `config.json` and tokenizer files are in
    /// `model_dir` and whose tensors (Hugging Face names, f32) are `tensors`, with its matrices
    /// in `ty` (one of [`EXPORT_TYPES`]).
    pub fn plan(
        model_dir: &Path,
        tensors: &[(&str, &'a HostTensor)],
        ty: GgmlType,
    ) -> Result<GgufExport<'a>> {
        if !EXPORT_TYPES.contains(&ty) {
            return Err(Error::Invalid(format!(
                "GGUF export writes F32, F16, BF16 or Q8_0 matrices, not {ty}"
            )));
        }
        let config = ModelConfig::load(model_dir)?;
        let config_at = model_dir.join("config.json").display().to_string();
        if config.rope_scaling.is_some() {
            return Err(Error::unsupported(
                &config_at,
                "rope_scaling: GGUF export does not write llama.cpp's rope frequency factors",
            ));
        }
        let (arch, permutes) = match config.architecture {
            Architecture::Qwen2 => ("qwen2", false),
            Architecture::Llama | Architecture::Mistral => ("llama", true),
        };

        let by_name: BTreeMap<&str, &HostTensor> = tensors.iter().copied().collect();
        let parameters = config.parameters();
        if let Some((extra, _)) = tensors
            .iter()
            .find(|(n, _)| !parameters.iter().any(|(p, _)| p == n))
        {
            return Err(Error::Invalid(format!(
                "tensor `{extra}` is not a parameter of the {} model {config_at} describes",
                config.architecture.hf_class()
            )));
        }
        let mut planned = Vec::with_capacity(parameters.len());
        for (name, shape) in &parameters {
            let t = by_name.get(name.as_str()).ok_or_else(|| {
                Error::Invalid(format!(
                    "tensor `{name}` of the model {config_at} describes is missing"
                ))
            })?;
            if &t.shape != shape || t.data.len() != shape.iter().product::<usize>() {
                return Err(Error::Invalid(format!(
                    "tensor `{name}`: shape {:?}, {config_at} implies {shape:?}",
                    t.shape
                )));
            }
            let gguf = gguf_name(name).expect("every parameter has a llama.cpp name");
            let heads = if name.contains("self_attn.q_proj.") {
                Some(config.heads)
            } else if name.contains("self_attn.k_proj.") {
                Some(config.kv_heads)
            } else {
                None
            };
            let values = match heads.filter(|_| permutes) {
                Some(h) => Cow::Owned(permute_qk(t, h, name)?.data),
                None => Cow::Borrowed(t.data.as_slice()),
            };
            planned.push(Planned {
                ggml_type: tensor_type(shape, ty),
                name: gguf,
                shape: shape.clone(),
                values,
            });
        }

        let tokenizer = tokenizer_metadata(model_dir, config.vocab)?;
        let name = model_dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into());
        let key = |k: &str| format!("{arch}.{k}");
        let u32v = |v: usize| MetadataValue::U32(v as u32);
        let mut metadata = vec![
            (
                "general.architecture".into(),
                MetadataValue::String(arch.into()),
            ),
            ("general.type".into(), MetadataValue::String("model".into())),
            ("general.name".into(), MetadataValue::String(name)),
            (
                "general.alignment".into(),
                MetadataValue::U32(DEFAULT_ALIGNMENT as u32),
            ),
            (key("block_count"), u32v(config.layers)),
            (key("context_length"), u32v(config.max_positions)),
            (key("embedding_length"), u32v(config.hidden)),
            (key("feed_forward_length"), u32v(config.intermediate)),
            (key("attention.head_count"), u32v(config.heads)),
            (key("attention.head_count_kv"), u32v(config.kv_heads)),
            (
                key("rope.freq_base"),
                MetadataValue::F32(config.rope_theta as f32),
            ),
            (
                key("attention.layer_norm_rms_epsilon"),
                MetadataValue::F32(config.rms_norm_eps as f32),
            ),
            (key("attention.key_length"), u32v(config.head_dim)),
            (key("attention.value_length"), u32v(config.head_dim)),
            (
                "general.file_type".into(),
                MetadataValue::U32(file_type(ty)),
            ),
            (key("vocab_size"), u32v(config.vocab)),
            (key("rope.dimension_count"), u32v(config.head_dim)),
            (
                "general.quantization_version".into(),
                MetadataValue::U32(QUANT_VERSION),
            ),
        ];
        if let Some(t) = &tokenizer {
            metadata.extend(t.entries.iter().cloned());
        }
        Ok(GgufExport {
            metadata,
            tensors: planned,
            architecture: arch,
            tokenizer,
        })
    }

    /// The metadata pairs the file will hold, in order.
    pub fn metadata(&self) -> &[(String, MetadataValue)] {
        &self.metadata
    }

    /// Writes the file `out` atomically (a temporary file in its folder, then a rename).
    pub fn write(&self, out: &Path) -> Result<GgufExportReport> {
        let tensors: Vec<WriteTensor<'_>> = self
            .tensors
            .iter()
            .map(|t| WriteTensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                ggml_type: t.ggml_type,
                data: TensorData::F32(&t.values),
            })
            .collect();
        let written = writer::write(out, &self.metadata, &tensors)?;
        let mut tensor_types = BTreeMap::new();
        for t in &self.tensors {
            *tensor_types
                .entry(t.ggml_type.name().to_string())
                .or_insert(0) += 1;
        }
        Ok(GgufExportReport {
            path: out.to_path_buf(),
            architecture: self.architecture,
            tensors: self.tensors.len(),
            tensor_types,
            bytes: written.bytes,
            metadata: self.metadata.len(),
            tokenizer: self.tokenizer.clone(),
        })
    }
}

/// Exports the Hugging Face model folder `model_dir` (its safetensors read as f32) to the GGUF
/// file `out` with its matrices in `ty`.
pub fn export(model_dir: &Path, out: &Path, ty: GgmlType) -> Result<GgufExportReport> {
    let config = ModelConfig::load(model_dir)?;
    let st = SafeTensors::open(model_dir)?;
    st.check(&config.parameters())?;
    let tensors = config
        .parameters()
        .into_iter()
        .map(|(name, _)| st.get(&name).map(|t| (name, t)))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<(&str, &HostTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    GgufExport::plan(model_dir, &refs, ty)?.write(out)
}

//! [`import`]: a GGUF Llama/Qwen2 model to a Hugging Face folder (`config.json`,
//! `generation_config.json`, `model.safetensors` in f32, `tokenizer.json`,
//! `tokenizer_config.json`), written atomically.
//!
//! Everything is checked before the first byte is written (names, types, the config and the
//! tokenizer); the folder is written next to `out` under a temporary name and renamed into
//! place at the end, so `out` is either absent, the earlier contents, or the complete import.
//! An existing `out` is replaced only if it is empty or was written by an earlier import (it
//! holds [`MARKER`]); anything else is refused, so an import never deletes other files.

use super::config::GgufModelConfig;
use super::names::{self, QkRole};
use super::reader::{GgufFile, TensorInfo};
use super::tokenizer;
use crate::{Error, Result};
use safetensors::tensor::{Dtype, View};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file an import leaves in its folder (what it came from), which lets a later import
/// replace the folder.
pub const MARKER: &str = "kiln-import.json";

/// What [`import`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportReport {
    /// The folder written.
    pub out_dir: PathBuf,
    /// `general.architecture`.
    pub architecture: String,
    /// The model's configuration.
    pub config: GgufModelConfig,
    /// The number of tensors written.
    pub tensors: usize,
    /// The number of parameters (elements of all tensors).
    pub parameters: u64,
    /// How many tensors of each GGUF type the file held (`Q4_1` → 210).
    pub tensor_types: BTreeMap<String, usize>,
    /// The tokenizer kind (`gpt2` or `llama`) and its vocabulary size.
    pub tokenizer: (String, usize),
    /// Whether an earlier import in `out_dir` was replaced.
    pub replaced: bool,
}

/// A tensor to write: dequantized (and un-permuted) only when the serializer asks for its
/// bytes, so one tensor at a time is in memory as f32.
struct PendingTensor<'a> {
    file: &'a GgufFile,
    info: &'a TensorInfo,
    shape: Vec<usize>,
    /// The heads to undo llama.cpp's Q/K permutation with.
    unpermute_heads: Option<usize>,
    /// Why producing the bytes failed, if it did.
    failed: std::cell::Cell<Option<String>>,
}

impl PendingTensor<'_> {
    fn values(&self) -> Result<Vec<f32>> {
        let t = self.file.dequantize_info(self.info)?;
        Ok(match self.unpermute_heads {
            Some(heads) => names::unpermute_qk(&t, heads, &self.info.name)?.data,
            None => t.data,
        })
    }
}

impl View for &PendingTensor<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        // `plan` checked everything that can fail (type, size, head layout), so this does not
        // error; if it did, the error is kept and the import fails after serializing.
        let values = self.values().unwrap_or_else(|e| {
            self.failed.set(Some(e.to_string()));
            vec![0.0; self.info.n_elements as usize]
        });
        Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    fn data_len(&self) -> usize {
        self.info.n_elements as usize * 4
    }
}

/// Imports the GGUF model at `path` into the Hugging Face folder `out_dir`.
pub fn import(path: impl AsRef<Path>, out_dir: impl AsRef<Path>) -> Result<ImportReport> {
    let path = path.as_ref();
    let out_dir = out_dir.as_ref();
    let file = GgufFile::open(path)?;
    let config = GgufModelConfig::from_gguf(&file)?;
    let tok = tokenizer::build(&file)?;
    let (pending, tensor_types) = plan(&file, &config)?;
    let replaced = check_destination(out_dir)?;

    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let base = out_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Invalid(format!("{}: not a folder name", out_dir.display())))?;
    let temp = parent.join(format!(".{base}.kiln-import-{}", std::process::id()));
    if temp.exists() {
        std::fs::remove_dir_all(&temp).map_err(|e| Error::io(&temp, e))?;
    }
    std::fs::create_dir(&temp).map_err(|e| Error::io(&temp, e))?;
    let written = write_folder(&temp, &file, &config, &tok, pending).and_then(|()| {
        if replaced {
            let old = parent.join(format!(".{base}.kiln-old-{}", std::process::id()));
            std::fs::rename(out_dir, &old).map_err(|e| Error::io(out_dir, e))?;
            std::fs::rename(&temp, out_dir).map_err(|e| Error::io(out_dir, e))?;
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))
        } else {
            if out_dir.exists() {
                // empty (checked): make room for the rename
                std::fs::remove_dir(out_dir).map_err(|e| Error::io(out_dir, e))?;
            }
            std::fs::rename(&temp, out_dir).map_err(|e| Error::io(out_dir, e))
        }
    });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&temp);
        return Err(e);
    }
    Ok(ImportReport {
        out_dir: out_dir.to_path_buf(),
        architecture: file.architecture()?.to_string(),
        tensors: file.tensors().len(),
        parameters: file.tensors().iter().map(|t| t.n_elements).sum(),
        tensor_types,
        tokenizer: (tok.model.clone(), tok.vocab_size),
        replaced,
        config,
    })
}

/// Each tensor's Hugging Face name and how to produce it, after checking all of them.
#[allow(clippy::type_complexity)]
fn plan<'a>(
    file: &'a GgufFile,
    config: &GgufModelConfig,
) -> Result<(Vec<(String, PendingTensor<'a>)>, BTreeMap<String, usize>)> {
    let mut pending = vec![];
    let mut types = BTreeMap::new();
    for info in file.tensors() {
        let location = format!("{}: tensor `{}`", file.path().display(), info.name);
        let hf = names::hf_name(&info.name).ok_or_else(|| {
            Error::unsupported(
                &location,
                format!(
                    "not a tensor of a {} model Kiln knows how to import",
                    config.arch.hf_class()
                ),
            )
        })?;
        if let Some(layer) = hf.layer.filter(|&l| l >= config.num_hidden_layers) {
            return Err(Error::format(
                &location,
                format!(
                    "layer {layer}, but the model has {} layers",
                    config.num_hidden_layers
                ),
            ));
        }
        if !info.ggml_type.can_dequantize() {
            return Err(Error::unsupported(
                &location,
                format!(
                    "type {} cannot be dequantized (supported: {})",
                    info.ggml_type,
                    super::GgmlType::supported_list()
                ),
            ));
        }
        let unpermute_heads = match hf.qk {
            Some(role) if config.arch.permutes_qk() => Some(match role {
                QkRole::Query => config.num_attention_heads,
                QkRole::Key => config.num_key_value_heads,
            }),
            _ => None,
        };
        let shape = info.shape();
        if let Some(heads) = unpermute_heads {
            let rows = shape.first().copied().unwrap_or(0);
            if rows != heads * config.head_dim || config.head_dim % 2 != 0 {
                return Err(Error::format(
                    &location,
                    format!(
                        "{rows} rows, expected {heads} heads of {} (an even head size)",
                        config.head_dim
                    ),
                ));
            }
        }
        *types.entry(info.ggml_type.name().to_string()).or_insert(0) += 1;
        pending.push((
            hf.name,
            PendingTensor {
                file,
                info,
                shape,
                unpermute_heads,
                failed: std::cell::Cell::new(None),
            },
        ));
    }
    Ok((pending, types))
}

/// Whether `out` holds an earlier import to replace; errors if it holds anything else.
fn check_destination(out: &Path) -> Result<bool> {
    if !out.exists() {
        return Ok(false);
    }
    if !out.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: exists and is not a folder; refusing to overwrite it",
            out.display()
        )));
    }
    if out.join(MARKER).is_file() {
        return Ok(true);
    }
    let mut entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
    if entries.next().is_some() {
        return Err(Error::Invalid(format!(
            "{}: the folder is not empty and is not an earlier import (no {MARKER}); \
             refusing to overwrite it",
            out.display()
        )));
    }
    Ok(false)
}

fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> Result<()> {
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::format(path.display().to_string(), e.to_string()))?;
    std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))
}

fn write_folder(
    dir: &Path,
    file: &GgufFile,
    config: &GgufModelConfig,
    tok: &tokenizer::GgufTokenizer,
    pending: Vec<(String, PendingTensor<'_>)>,
) -> Result<()> {
    write_json(dir, "config.json", &config.to_hf_json())?;
    let mut generation = serde_json::json!({
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
    });
    if let Some(pad) = tok.pad_token_id {
        generation["pad_token_id"] = pad.into();
    }
    write_json(dir, "generation_config.json", &generation)?;
    write_json(dir, "tokenizer.json", &tok.tokenizer_json)?;
    write_json(dir, "tokenizer_config.json", &tok.tokenizer_config)?;

    let weights = dir.join("model.safetensors");
    let mut info = std::collections::HashMap::new();
    info.insert("format".to_string(), "pt".to_string());
    let views = pending.iter().map(|(name, t)| (name.as_str(), t));
    safetensors::tensor::serialize_to_file(views, Some(info), &weights)
        .map_err(|e| Error::format(weights.display().to_string(), e.to_string()))?;
    if let Some(e) = pending.iter().find_map(|(_, t)| t.failed.take()) {
        return Err(Error::format(weights.display().to_string(), e));
    }

    let marker = serde_json::json!({
        "source": file.path().display().to_string(),
        "source_bytes": std::fs::metadata(file.path()).map(|m| m.len()).ok(),
        "gguf_version": file.version(),
        "written_by": concat!("kiln ", env!("CARGO_PKG_VERSION")),
    });
    write_json(dir, MARKER, &marker)
}

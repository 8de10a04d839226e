//! Hugging Face model folders written by Kiln (a merged adapter, a fully fine-tuned model):
//! `config.json` from the base model with the dtype that was written, `model.safetensors`, and
//! every tokenizer and generation file the base has, so that transformers (and `kiln eval`)
//! load the folder as they load the base.
//!
//! The folder is written atomically ([`crate::atomic::write_dir`]). It holds [`MARKER`], and an
//! existing folder is replaced only if it is empty or holds one (an earlier export), so an
//! export never deletes anything else.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::config::ModelConfig;
use crate::model::Model;
use crate::precision::download;
use crate::weights::{self, SaveDtype};
use crate::{atomic, Error, HostTensor, Result};

/// The file an export leaves in its folder, which lets a later export replace the folder.
pub const MARKER: &str = "kiln-export.json";

/// The files copied from the base folder when it has them: tokenizers, chat templates and
/// generation settings.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
];

/// The `torch_dtype` transformers names `dtype` by.
fn torch_dtype(dtype: SaveDtype) -> &'static str {
    match dtype {
        SaveDtype::F32 => "float32",
        SaveDtype::BF16 => "bfloat16",
    }
}

/// Writes the Hugging Face folder `out`: `base`'s `config.json` (with `torch_dtype`, and
/// `dtype` where the base has it, set to `dtype`), `tensors` (Hugging Face names, the
/// parameters `base`'s config implies, in any order) as `model.safetensors` in `dtype`, and
/// [`TOKENIZER_FILES`] copied from `base`.
pub fn write_model_folder(
    base: &Path,
    tensors: &[(&str, &HostTensor)],
    dtype: SaveDtype,
    out: &Path,
) -> Result<()> {
    write_model_folder_noted(base, tensors, dtype, out, Value::Null)
}

/// [`write_model_folder`], with `note` (what the weights are: an adapter merged, a training
/// run) recorded in the folder's [`MARKER`].
pub fn write_model_folder_noted(
    base: &Path,
    tensors: &[(&str, &HostTensor)],
    dtype: SaveDtype,
    out: &Path,
    note: Value,
) -> Result<()> {
    let config_path = base.join("config.json");
    let config = ModelConfig::load(&config_path)?;
    check_tensors(&config, tensors, &config_path.display().to_string())?;
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let mut config_json: Value = serde_json::from_str(&text).map_err(|e| {
        Error::format(
            config_path.display().to_string(),
            format!("invalid JSON: {e}"),
        )
    })?;
    let object = config_json.as_object_mut().ok_or_else(|| {
        Error::format(config_path.display().to_string(), "expected a JSON object")
    })?;
    object.insert("torch_dtype".into(), json!(torch_dtype(dtype)));
    if object.contains_key("dtype") {
        object.insert("dtype".into(), json!(torch_dtype(dtype)));
    }
    if same_folder(base, out) {
        return Err(Error::Invalid(format!(
            "{}: is the base model's folder; refusing to overwrite it",
            out.display()
        )));
    }

    atomic::write_dir(out, replaceable, |dir| {
        let config_out = dir.join("config.json");
        let pretty = serde_json::to_string_pretty(&config_json).expect("a JSON value prints");
        std::fs::write(&config_out, pretty + "\n").map_err(|e| Error::io(&config_out, e))?;
        let mut copied = vec![];
        for file in TOKENIZER_FILES {
            let from = base.join(file);
            if from.is_file() {
                let to = dir.join(file);
                std::fs::copy(&from, &to).map_err(|e| Error::io(&from, e))?;
                copied.push(*file);
            }
        }
        weights::save(
            dir.join(weights::SINGLE_FILE),
            tensors,
            dtype,
            &BTreeMap::new(),
        )?;
        let marker = json!({
            "base": base.display().to_string(),
            "dtype": torch_dtype(dtype),
            "tensors": tensors.len(),
            "copied": copied,
            "note": note,
            "written_by": concat!("kiln ", env!("CARGO_PKG_VERSION")),
        });
        let marker_path = dir.join(MARKER);
        let text = serde_json::to_string_pretty(&marker).expect("a JSON value prints");
        std::fs::write(&marker_path, text + "\n").map_err(|e| Error::io(&marker_path, e))
    })
}

/// Whether the existing folder `out` may be replaced: it is empty or an earlier export.
fn replaceable(out: &Path) -> Result<bool> {
    if out.join(MARKER).is_file() {
        return Ok(true);
    }
    let mut entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
    if entries.next().is_some() {
        return Err(Error::Invalid(format!(
            "{}: the folder is not empty and is not an earlier Kiln export (no {MARKER}); \
             refusing to overwrite it",
            out.display()
        )));
    }
    Ok(true)
}

fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `tensors` are exactly the parameters of `config`, with their shapes.
fn check_tensors(
    config: &ModelConfig,
    tensors: &[(&str, &HostTensor)],
    config_at: &str,
) -> Result<()> {
    let parameters = config.parameters();
    for (name, t) in tensors {
        let Some((_, shape)) = parameters.iter().find(|(p, _)| p == name) else {
            return Err(Error::Invalid(format!(
                "tensor `{name}` is not a parameter of the model {config_at} describes"
            )));
        };
        if &t.shape != shape || t.data.len() != shape.iter().product::<usize>() {
            return Err(Error::Invalid(format!(
                "tensor `{name}`: shape {:?} ({} values), {config_at} implies {shape:?}",
                t.shape,
                t.data.len()
            )));
        }
    }
    if let Some((missing, _)) = parameters
        .iter()
        .find(|(p, _)| !tensors.iter().any(|(n, _)| n == p))
    {
        return Err(Error::Invalid(format!(
            "tensor `{missing}` of the model {config_at} describes is missing"
        )));
    }
    Ok(())
}

/// Every parameter of `model` on the host as f32, with its Hugging Face name, in the order of
/// [`ModelConfig::parameters`].
pub fn model_tensors(model: &Model) -> Result<Vec<(String, HostTensor)>> {
    let parameters = model.config.parameters();
    let named = model.weights.named();
    if named.len() != parameters.len() {
        return Err(Error::Invalid(format!(
            "the model holds {} tensors, its config implies {}",
            named.len(),
            parameters.len()
        )));
    }
    named
        .into_iter()
        .zip(parameters)
        .map(|((name, buffer), (_, shape))| {
            let data = download(buffer)?;
            if data.len() != shape.iter().product::<usize>() {
                return Err(Error::Invalid(format!(
                    "tensor `{name}`: {} values, its shape {shape:?} implies {}",
                    data.len(),
                    shape.iter().product::<usize>()
                )));
            }
            Ok((name, HostTensor { shape, data }))
        })
        .collect()
}

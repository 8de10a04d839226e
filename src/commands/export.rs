//! `kiln export`: a model (optionally with a PEFT LoRA adapter merged into it) as a Hugging Face
//! folder and/or one GGUF file for llama.cpp.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::ValueEnum;
use kiln::models::export::{model_tensors, write_model_folder_noted};
use kiln::models::gguf::{GgmlType, GgufExport};
use kiln::models::model::Model;
use kiln::models::precision::Precision;
use kiln::models::weights::{Dtype, SafeTensors, SaveDtype};
use kiln::models::HostTensor;
use kiln::ops::Ops;
use kiln::runtime::Device;

/// The arguments of `kiln export`.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// The base model: a Hugging Face folder (`config.json`, safetensors, tokenizer files).
    #[arg(long)]
    model: PathBuf,
    /// A PEFT LoRA adapter folder to merge into the base (with `--merge`).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Merge `--adapter` into the weights it targets (`W += scale · B A`, in f32).
    #[arg(long)]
    merge: bool,
    /// Write a Hugging Face folder here (config, `model.safetensors`, the base's tokenizer
    /// files); replaced only if empty or an earlier export.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write one GGUF file here (llama.cpp's names, Q/K permutation and tokenizer metadata).
    #[arg(long, value_name = "FILE")]
    gguf: Option<PathBuf>,
    /// The type of the GGUF's matrices (norms and biases stay f32; q8_0 rows that are not
    /// whole blocks of 32 are written f16, as llama.cpp's converter does).
    #[arg(long, value_enum, default_value_t = GgufType::F16)]
    gguf_type: GgufType,
    /// The dtype of `--out`'s safetensors (default: the base's; f16 bases are written f32).
    #[arg(long, value_enum)]
    dtype: Option<FolderDtype>,
}

/// `--gguf-type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GgufType {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
}

impl GgufType {
    fn ggml(self) -> GgmlType {
        match self {
            GgufType::F32 => GgmlType::F32,
            GgufType::F16 => GgmlType::F16,
            GgufType::Bf16 => GgmlType::Bf16,
            GgufType::Q8_0 => GgmlType::Q8_0,
        }
    }
}

/// `--dtype`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FolderDtype {
    F32,
    Bf16,
}

fn dtype_name(d: SaveDtype) -> &'static str {
    match d {
        SaveDtype::F32 => "f32",
        SaveDtype::BF16 => "bf16",
    }
}

/// The dtype the base's embedding is stored in, as a folder dtype (f16 widens to f32).
fn base_dtype(model: &Path) -> Result<SaveDtype, String> {
    let st = SafeTensors::open(model).map_err(|e| format!("error: {e}"))?;
    let name = st
        .names()
        .find(|n| *n == "model.embed_tokens.weight")
        .or_else(|| st.names().next())
        .map(str::to_string);
    Ok(match name.and_then(|n| st.info(&n).map(|i| i.dtype)) {
        Some(Dtype::BF16) => SaveDtype::BF16,
        _ => SaveDtype::F32,
    })
}

fn file_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

pub fn run(args: ExportArgs) -> Result<String, String> {
    super::with_spinner("exporting", || export(args))
}

fn export(args: ExportArgs) -> Result<String, String> {
    let err = |e: kiln::models::Error| format!("error: {e}");
    match (&args.adapter, args.merge) {
        (Some(adapter), false) => {
            return Err(format!(
                "error: {}: an adapter is exported as it is: it already is a PEFT folder \
                 (`peft.PeftModel.from_pretrained` loads it over the base); pass --merge to \
                 write base + adapter as one model",
                adapter.display()
            ))
        }
        (None, true) => return Err("error: --merge needs --adapter DIR".into()),
        _ => {}
    }
    if args.out.is_none() && args.gguf.is_none() {
        let what = "--out DIR (a Hugging Face folder) and/or --gguf FILE";
        return Err(format!("error: nothing to write: give {what}"));
    }
    if let Some(path) = &args.gguf {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let problem = if path.is_dir() {
            Some("it is a folder".to_string())
        } else if !parent.is_dir() {
            Some(format!("{} is not a folder", parent.display()))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(format!(
                "error: {}: cannot write the GGUF file there: {problem}",
                path.display()
            ));
        }
    }
    // The exact path: f32 weights on the CPU, the adapter merged in f32.
    let ops = Arc::new(Ops::new(Device::cpu()));
    let mut model = Model::load(&args.model, ops, Precision::F32).map_err(err)?;
    if let Some(adapter) = &args.adapter {
        model.merge_adapter(adapter).map_err(err)?;
    }
    let dtype = match args.dtype {
        Some(FolderDtype::F32) => SaveDtype::F32,
        Some(FolderDtype::Bf16) => SaveDtype::BF16,
        None => base_dtype(&args.model)?,
    };
    let tensors = model_tensors(&model).map_err(err)?;
    drop(model);
    let refs: Vec<(&str, &HostTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    // Planned (everything checked) before anything is written.
    let gguf = match &args.gguf {
        Some(_) => Some(GgufExport::plan(&args.model, &refs, args.gguf_type.ggml()).map_err(err)?),
        None => None,
    };

    let out_existed = args.out.as_ref().is_some_and(|o| o.exists());

    let mut report = String::new();
    let merged = args
        .adapter
        .as_ref()
        .map(|a| format!(" + {} (merged)", a.display()))
        .unwrap_or_default();
    if let Some(out) = &args.out {
        let note = serde_json::json!({
            "adapter": args.adapter.as_ref().map(|a| a.display().to_string()),
            "merged": args.merge,
        });
        write_model_folder_noted(&args.model, &refs, dtype, out, note).map_err(err)?;
        let weights = out.join("model.safetensors");
        report += &format!(
            "wrote {}: {}{merged} as a Hugging Face folder, {} tensors in {} ({} bytes of \
             model.safetensors)\n",
            out.display(),
            args.model.display(),
            refs.len(),
            dtype_name(dtype),
            file_bytes(&weights),
        );
    }
    if let (Some(path), Some(plan)) = (&args.gguf, &gguf) {
        let written = plan.write(path).map_err(|e| {
            // A folder this run made is not left behind half of what was asked for.
            if let Some(out) = args.out.as_ref().filter(|_| !out_existed) {
                let _ = std::fs::remove_dir_all(out);
            }
            err(e)
        })?;
        let types: Vec<String> = written
            .tensor_types
            .iter()
            .map(|(ty, n)| format!("{ty} {n}"))
            .collect();
        let tokenizer = match &written.tokenizer {
            Some(t) => format!(
                "tokenizer {} (pre {}), {} tokens{}",
                t.model,
                t.pre,
                t.tokens,
                if t.padded > 0 {
                    format!(" ({} padding ids)", t.padded)
                } else {
                    String::new()
                }
            ),
            None => {
                eprintln!(
                    "warning: {} has no tokenizer.json: the GGUF has no tokenizer, so llama.cpp \
                     cannot run it",
                    args.model.display()
                );
                "no tokenizer".into()
            }
        };
        report += &format!(
            "wrote {}: GGUF v3, {}{merged}, architecture {}, {} tensors ({}), {} metadata \
             pairs, {tokenizer}, {} bytes\n",
            path.display(),
            args.model.display(),
            written.architecture,
            written.tensors,
            types.join(", "),
            written.metadata,
            written.bytes,
        );
    }
    Ok(report)
}

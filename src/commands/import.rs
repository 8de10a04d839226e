//! `kiln import`: a GGUF model (Llama or Qwen2, any of the dequantizable types) to a Hugging
//! Face folder with f32 weights.

use std::path::Path;
use std::time::Instant;

use kiln::models::gguf;

/// Imports `file` into `out` and returns the summary to print.
pub fn run(file: &Path, out: &Path) -> Result<String, String> {
    let start = Instant::now();
    let report = super::with_spinner(&format!("importing {}", file.display()), || {
        gguf::import(file, out)
    })
    .map_err(|e| format!("error: {e}"))?;
    let seconds = start.elapsed().as_secs_f64();
    let c = &report.config;
    let types: Vec<String> = report
        .tensor_types
        .iter()
        .map(|(ty, n)| format!("{ty} {n}"))
        .collect();
    Ok(format!(
        "imported {} -> {}{}\n  \
         architecture: {} ({}), {} layers, hidden {}, {}/{} heads of {}, vocab {}{}\n  \
         tensors: {} ({}), {:.1}M parameters, written as f32\n  \
         tokenizer: {}, {} tokens\n  \
         time: {seconds:.2} s\n",
        file.display(),
        report.out_dir.display(),
        if report.replaced {
            " (replacing an earlier import)"
        } else {
            ""
        },
        report.architecture,
        c.arch.hf_class(),
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.vocab_size,
        if c.tie_word_embeddings {
            ", tied embeddings"
        } else {
            ""
        },
        report.tensors,
        types.join(", "),
        report.parameters as f64 / 1e6,
        report.tokenizer.0,
        report.tokenizer.1,
    ))
}

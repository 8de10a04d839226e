//! `kiln eval`: the token-weighted mean loss and perplexity of a model over a JSONL file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use kiln::models::batch::{Batch, Sequence};
use kiln::models::eval::evaluate;
use kiln::models::model::Model;
use kiln::models::precision::Precision;
use kiln::models::weights::{save, SaveDtype};
use kiln::models::HostTensor;

use super::data::{self, DataArgs};
use super::device::{self, DeviceChoice};

/// The arguments of `kiln eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// A Hugging Face model folder (`kiln import` writes one from a GGUF file).
    #[arg(long)]
    model: PathBuf,
    /// JSON Lines or Parquet, in any format `kiln train` reads: `{"input_ids": [...]}`
    /// (optionally `"labels"`, -100 ignored) used exactly as given, `{"text": ...}`,
    /// prompt/completion or `messages` (the loss over the targets training would use).
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    data_args: DataArgs,
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    precision: Precision,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    device: DeviceChoice,
    /// Print one JSON object: `loss`, `tokens` (predicted tokens), `perplexity`.
    #[arg(long)]
    json: bool,
    /// Write each sequence's per-token losses, one JSON line per input sequence in input
    /// order: `{"index": i, "losses": [...]}` (n - 1 losses for n tokens, null where ignored).
    #[arg(long, value_name = "FILE")]
    per_token_losses: Option<PathBuf>,
    /// Tokens per packed batch (sequences are packed Best-Fit-Decreasing).
    #[arg(long, default_value_t = 4096)]
    batch_tokens: usize,
    /// A PEFT LoRA adapter folder (`adapter_config.json`, `adapter_model.safetensors`),
    /// merged into the weights it targets at load.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Write the logits of every position of every sequence as safetensors: `logits`, f32
    /// `[tokens, vocab]`, the sequences' tokens one after another in input order (metadata
    /// `sequence_starts`: the first row of each). At most 4096 tokens.
    #[arg(long, value_name = "FILE")]
    logits: Option<PathBuf>,
}

/// The most tokens `--logits` writes (the file holds `tokens × vocab` f32 values).
const MAX_LOGIT_TOKENS: usize = 4096;

pub fn parse_precision(s: &str) -> Result<Precision, String> {
    s.parse().map_err(|e: kiln::models::Error| e.to_string())
}

pub fn run(args: EvalArgs) -> Result<String, String> {
    let err = |e: kiln::models::Error| e.to_string();
    let ops = device::ops(args.device)?;
    let mut model = Model::load(&args.model, ops, args.precision).map_err(err)?;
    if let Some(adapter) = &args.adapter {
        model.merge_adapter(adapter).map_err(err)?;
    }
    // Text, completions and chats need the tokenizer; token ids do not.
    let tokenizer = data::tokenizer(&args.model)?;
    let (store, _) = data::read_small(
        &args.data,
        tokenizer.as_ref(),
        model.config.vocab,
        &args.data_args,
    )?;
    let sequences: Vec<Sequence> = (0..store.len()).map(|i| store.example(i)).collect();
    let input_tokens: usize = sequences.iter().map(|s| s.input_ids.len()).sum();
    if args.logits.is_some() && input_tokens > MAX_LOGIT_TOKENS {
        return Err(format!(
            "{}: {input_tokens} tokens; --logits writes at most {MAX_LOGIT_TOKENS} \
             ({MAX_LOGIT_TOKENS} × {} f32 values)",
            args.data.display(),
            model.config.vocab
        ));
    }
    let (report, losses) = evaluate(&model, &sequences, args.batch_tokens.max(1)).map_err(err)?;

    if let Some(path) = &args.per_token_losses {
        let mut out = String::new();
        for (i, seq) in losses.iter().enumerate() {
            let line = serde_json::json!({ "index": i, "losses": seq });
            writeln!(out, "{line}").expect("writing to a String");
        }
        write_atomically(path, out.as_bytes())?;
    }
    if let Some(path) = &args.logits {
        write_logits(&model, &sequences, path).map_err(err)?;
    }
    if args.json {
        let object = serde_json::json!({
            "loss": report.loss,
            "tokens": report.tokens,
            "perplexity": report.perplexity,
            "input_tokens": report.input_tokens,
            "sequences": sequences.len(),
            "batches": report.batches,
            "seconds": report.seconds,
            "tokens_per_second": report.tokens_per_second(),
        });
        return Ok(format!("{object}\n"));
    }
    Ok(format!(
        "loss {:.6}  perplexity {:.4}  over {} predicted tokens ({} sequences, {} input tokens \
         in {} packed batches, {:.2} s, {:.0} tokens/s, {} {})\n",
        report.loss,
        report.perplexity,
        report.tokens,
        sequences.len(),
        report.input_tokens,
        report.batches,
        report.seconds,
        report.tokens_per_second(),
        model.precision,
        model.ops().device(),
    ))
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// reader never sees half a file.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    let name = path
        .file_name()
        .ok_or_else(|| format!("{}: not a file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", path.display())
    })
}

/// Writes the logits of every position of `sequences` (each run alone) to `path`.
fn write_logits(
    model: &Model,
    sequences: &[Sequence],
    path: &std::path::Path,
) -> kiln::models::Result<()> {
    let vocab = model.config.vocab;
    let mut data = Vec::new();
    let mut starts = Vec::with_capacity(sequences.len());
    for seq in sequences {
        starts.push(data.len() / vocab);
        let batch = Batch::pack(&[seq], vocab)?;
        let rows: Vec<usize> = (0..seq.input_ids.len()).collect();
        for row in model.logits(&batch.upload(model.ops())?, &rows)? {
            data.extend(row);
        }
    }
    let tensor = HostTensor::new(vec![data.len() / vocab, vocab], data);
    let mut metadata = BTreeMap::new();
    metadata.insert(
        "sequence_starts".to_string(),
        serde_json::to_string(&starts).expect("a list of numbers prints"),
    );
    save(path, &[("logits", &tensor)], SaveDtype::F32, &metadata)
}

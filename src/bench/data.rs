//! `kiln bench data`: tokenizing and packing a large JSONL as `kiln train` does it — read in
//! batches, records parsed and tokenized on every core, EOS appended, written to a fresh token
//! store (the cache key's hash of the file included) — beside Hugging Face `tokenizers` from
//! Python (`bench/peer_tokenize.py`: `json.loads` and `encode_batch`) on the same file and
//! tokenizer, in the same command. Then Best-Fit-Decreasing packs the examples.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln::models::data::{load_cached, DataOptions, DataSource};
use kiln::models::data_plan::{DataPlan, Examples, LongExamples};
use kiln::models::rng::SplitMix64;
use kiln::models::tokenizer::Tokenizer;
use serde_json::Value;

/// The arguments of `kiln bench data`.
#[derive(clap::Args)]
pub struct DataBenchArgs {
    /// A model folder with tokenizer.json (default: SmolLM2-135M-Instruct, as `kiln bench
    /// train` finds it).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A JSONL of `{"text": ...}` lines (default: one of --mb megabytes is generated).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The size of the generated file.
    #[arg(long, default_value_t = 100)]
    mb: usize,
    /// Bins of this many tokens for packing.
    #[arg(long, default_value_t = 2048)]
    max_seq_len: usize,
    /// The peer script.
    #[arg(long, default_value = "bench/peer_tokenize.py")]
    peer: PathBuf,
    /// The Python that runs it (with `tokenizers`).
    #[arg(long, default_value = "python3")]
    python: String,
    /// Measure Kiln only.
    #[arg(long)]
    no_peer: bool,
}

pub fn run(args: DataBenchArgs) -> Result<String, String> {
    let model = match &args.model {
        Some(m) => m.clone(),
        None => super::train::default_model()?,
    };
    let tokenizer = Tokenizer::load(&model).map_err(|e| e.to_string())?;
    let work = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    let data = match &args.data {
        Some(d) => d.clone(),
        None => {
            let path = work.path().join("text.jsonl");
            generate(&path, args.mb << 20)?;
            path
        }
    };
    let bytes = std::fs::metadata(&data)
        .map_err(|e| format!("{}: {e}", data.display()))?
        .len();

    let options = DataOptions::default();
    let source = DataSource {
        path: &data,
        tokenizer: Some(&tokenizer),
        vocab: tokenizer.vocab_size(),
        options: &options,
    };
    let start = Instant::now();
    let (store, report, _) =
        load_cached(&source, &work.path().join("cache"), &mut |_| {}).map_err(|e| e.to_string())?;
    let kiln_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let (examples, _) = Examples::prepare(
        std::sync::Arc::new(store),
        args.max_seq_len,
        LongExamples::Split,
        "bench",
    )
    .map_err(|e| e.to_string())?;
    let plan = DataPlan::new(examples, args.max_seq_len * 8, args.max_seq_len, 1)
        .map_err(|e| e.to_string())?;
    let efficiency = plan.packing_efficiency();
    let pack_s = start.elapsed().as_secs_f64();

    let mut out = format!(
        "{}: {:.0} MB, {} records; tokenizer {}\n",
        data.display(),
        bytes as f64 / 1e6,
        report.records,
        model.join("tokenizer.json").display()
    );
    out.push_str(&format!(
        "{:<16} {:>9} {:>12} {:>12} {:>8}\n",
        "who", "seconds", "tokens", "tokens/s", "vs peer"
    ));
    let kiln_rate = report.tokens as f64 / kiln_s;
    let mut peer_rate = None;
    if !args.no_peer {
        let eos = tokenizer.eos_id().ok_or("the tokenizer has no EOS token")?;
        let peer = peer(&args, &model.join("tokenizer.json"), &data, eos)?;
        let tokens = peer["tokens"].as_u64().unwrap_or(0) as usize;
        if tokens != report.tokens {
            out.push_str(&format!(
                "note: the peer counted {tokens} tokens, Kiln {}\n",
                report.tokens
            ));
        }
        peer_rate = peer["tokens_per_s"].as_f64();
        out.push_str(&format!(
            "{:<16} {:>9.2} {:>12} {:>12.0} {:>8}\n",
            format!("tokenizers {}", peer["version"].as_str().unwrap_or("?")),
            peer["seconds"].as_f64().unwrap_or(0.0),
            tokens,
            peer_rate.unwrap_or(0.0),
            ""
        ));
    }
    out.push_str(&format!(
        "{:<16} {:>9.2} {:>12} {:>12.0} {:>8}\n",
        "kiln",
        kiln_s,
        report.tokens,
        kiln_rate,
        peer_rate
            .map(|p| format!("{:.2}x", kiln_rate / p))
            .unwrap_or_default()
    ));
    out.push_str(&format!(
        "packing: {} examples into bins of {} tokens, {:.1}% full, in {:.2} s\n",
        plan.examples.len(),
        args.max_seq_len,
        100.0 * efficiency,
        pack_s
    ));
    Ok(out)
}

fn peer(args: &DataBenchArgs, tokenizer: &Path, data: &Path, eos: u32) -> Result<Value, String> {
    let peer_args = [
        "--tokenizer".to_string(),
        tokenizer.display().to_string(),
        "--data".to_string(),
        data.display().to_string(),
        "--eos".to_string(),
        eos.to_string(),
    ];
    super::run_peer(&args.python, &args.peer, &peer_args)
}

/// About `bytes` bytes of `{"text": ...}` lines: prose-like word sequences (some capitalised,
/// with numbers and punctuation) of log-uniform length, seeded.
fn generate(path: &Path, bytes: usize) -> Result<(), String> {
    const WORDS: &[&str] = &[
        "the",
        "model",
        "reads",
        "a",
        "token",
        "and",
        "writes",
        "next",
        "one",
        "while",
        "kernel",
        "runs",
        "on",
        "every",
        "tile",
        "of",
        "matrix",
        "we",
        "have",
        "seen",
        "that",
        "it",
        "is",
        "fast",
        "but",
        "you",
        "want",
        "to",
        "check",
        "what",
        "they",
        "done",
        "sure",
        "fine",
        "attention",
        "head",
        "cache",
        "prompt",
        "generation",
        "stream",
        "gradient",
        "optimizer",
        "learning",
        "rate",
        "schedule",
        "warmup",
        "packing",
        "bins",
        "sequence",
        "length",
        "batch",
        "step",
        "loss",
        "falls",
        "checkpoint",
        "resume",
        "training",
        "data",
        "format",
        "chat",
        "template",
        "assistant",
        "user",
        "system",
        "café",
        "naïve",
        "über",
        "straße",
        "définition",
        "función",
        "número",
        "über",
    ];
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut rng = SplitMix64::new(2026);
    let mut written = 0;
    let mut line = String::new();
    while written < bytes {
        line.clear();
        line.push_str("{\"text\": \"");
        // 20..2000 words, log-uniform.
        let words = (20f64 * 100f64.powf(rng.below(1 << 20) as f64 / (1 << 20) as f64)) as usize;
        for w in 0..words {
            let word = WORDS[rng.below(WORDS.len() as u64) as usize];
            if w > 0 {
                line.push(' ');
            }
            match rng.below(20) {
                0 => line.push_str(&rng.below(100_000).to_string()),
                1 => {
                    let mut c = word.chars();
                    if let Some(f) = c.next() {
                        line.extend(f.to_uppercase());
                        line.push_str(c.as_str());
                    }
                }
                2 => {
                    line.push_str(word);
                    line.push_str(if rng.below(2) == 0 { "." } else { "," });
                }
                _ => line.push_str(word),
            }
        }
        line.push_str("\"}\n");
        out.write_all(line.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        written += line.len();
    }
    out.flush().map_err(|e| format!("{}: {e}", path.display()))
}

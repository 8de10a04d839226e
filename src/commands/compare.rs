//! `kiln compare`: a base model and its fine-tune side by side on held-out prompts — the task
//! metric (exact match of greedy answers with the expected ones) for each, and example
//! generations next to each other.

use std::fmt::Write as _;
use std::path::PathBuf;

use kiln::models::model::Model;
use kiln::models::precision::Precision;
use kiln::models::task::{answer, exact_match, read_task_prompts};
use kiln::models::tokenizer::Tokenizer;

use super::device::parse_device;
use super::eval::parse_precision;

/// The arguments of `kiln compare`.
#[derive(clap::Args)]
pub struct CompareArgs {
    /// The base model folder.
    #[arg(long)]
    model: PathBuf,
    /// The fine-tune: a PEFT adapter folder merged into the base.
    #[arg(long, conflicts_with = "tuned")]
    adapter: Option<PathBuf>,
    /// The fine-tune: a model folder (a full fine-tune or a merged export).
    #[arg(long)]
    tuned: Option<PathBuf>,
    /// JSONL of held-out prompts: `messages` whose last message is the expected assistant
    /// answer, or `prompt` + `completion`.
    #[arg(long)]
    prompts: PathBuf,
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// How many prompts to show with both generations.
    #[arg(long, default_value_t = 2)]
    examples: usize,
    /// Write every prompt, expected answer and both generations as JSON lines.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    precision: Precision,
    /// cpu, cuda or cuda:N (default: the first GPU if there is one).
    #[arg(long)]
    device: Option<String>,
}

pub fn run(args: CompareArgs) -> Result<String, String> {
    let err = |e: kiln::models::Error| e.to_string();
    if args.adapter.is_none() && args.tuned.is_none() {
        return Err("give the fine-tune: --adapter DIR or --tuned DIR".into());
    }
    let prompts = read_task_prompts(&args.prompts).map_err(err)?;
    let ops = parse_device(args.device.as_deref())?;
    let tokenizer = Tokenizer::load(&args.model).map_err(err)?;
    let generate = |model: &Model| -> Result<Vec<String>, String> {
        prompts
            .iter()
            .map(|p| answer(model, &tokenizer, p, args.max_new_tokens).map_err(err))
            .collect()
    };
    let base = Model::load(&args.model, ops.clone(), args.precision).map_err(err)?;
    let before = generate(&base)?;
    drop(base);
    let tuned = match (&args.adapter, &args.tuned) {
        (Some(adapter), _) => {
            let mut m = Model::load(&args.model, ops, args.precision).map_err(err)?;
            m.merge_adapter(adapter).map_err(err)?;
            m
        }
        (None, Some(dir)) => Model::load(dir, ops, args.precision).map_err(err)?,
        (None, None) => unreachable!("checked above"),
    };
    let after = generate(&tuned)?;

    let n = prompts.len();
    let score = |answers: &[String]| {
        answers
            .iter()
            .zip(&prompts)
            .filter(|(a, p)| exact_match(a, &p.expected))
            .count()
    };
    let (hits_before, hits_after) = (score(&before), score(&after));
    let tuned_name = match (&args.adapter, &args.tuned) {
        (Some(a), _) => format!("fine-tuned ({})", a.display()),
        (_, Some(t)) => format!("fine-tuned ({})", t.display()),
        _ => unreachable!(),
    };
    let mut out = String::new();
    writeln!(
        out,
        "{n} held-out prompts ({}), greedy, at most {} new tokens; metric: exact match with the \
         expected answer",
        args.prompts.display(),
        args.max_new_tokens
    )
    .unwrap();
    let width = tuned_name.len().max(10);
    writeln!(out, "  {:<width$}  exact match", "model").unwrap();
    for (name, hits) in [("base", hits_before), (tuned_name.as_str(), hits_after)] {
        writeln!(
            out,
            "  {name:<width$}  {hits:>3}/{n} ({:.1}%)",
            100.0 * hits as f64 / n as f64
        )
        .unwrap();
    }
    for (i, p) in prompts.iter().enumerate().take(args.examples) {
        writeln!(out, "\nprompt {}: {}", i + 1, one_line(p.question())).unwrap();
        writeln!(out, "  expected:   {}", one_line(&p.expected)).unwrap();
        writeln!(out, "  base:       {}", one_line(&before[i])).unwrap();
        writeln!(out, "  fine-tuned: {}", one_line(&after[i])).unwrap();
    }
    if let Some(path) = &args.output {
        let mut lines = String::new();
        for ((p, b), a) in prompts.iter().zip(&before).zip(&after) {
            let line = serde_json::json!({
                "prompt": p.question(),
                "expected": p.expected,
                "base": b,
                "fine_tuned": a,
                "base_exact": exact_match(b, &p.expected),
                "fine_tuned_exact": exact_match(a, &p.expected),
            });
            writeln!(lines, "{line}").unwrap();
        }
        std::fs::write(path, lines).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(out)
}

/// `text` on one line, at most 100 characters.
fn one_line(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 100 {
        format!("{}...", flat.chars().take(97).collect::<String>())
    } else {
        flat
    }
}

//! The main job from Rust, at tiny scale: a LoRA+ fine-tune through the library API on the
//! weather-record task's chat data, then greedy answers to held-out prompts.
//!
//! The model is tiny and random (the shape of the tiny Llama test fixture, over the vocabulary of
//! the small ChatML tokenizer of `tests/fixtures/tokenizer/chatml`, with SmolLM2's chat
//! template), so it runs in seconds on a CPU; `scripts/run` does the same with SmolLM2-135M from
//! the command line. Point `KILN_EXAMPLE_MODEL` at a real model folder to fine-tune that instead.
//!
//!     cargo run --release --example finetune

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use kiln::models::adapters::{LoraSpec, Target};
use kiln::models::data::{load_in_memory, DataOptions, DataSource};
use kiln::models::data_plan::{Examples, LongExamples};
use kiln::models::model::Model;
use kiln::models::optim::{OptimizerConfig, Schedule, ScheduleKind};
use kiln::models::precision::Precision;
use kiln::models::random_init::save_random_model;
use kiln::models::task::{answer, exact_match, read_task_prompts};
use kiln::models::tokenizer::Tokenizer;
use kiln::models::trainer::{Length, LoraOptions, RunEnd, TrainOptions, Trainer};
use kiln::ops::Ops;
use kiln::runtime::Device;

type Error = Box<dyn std::error::Error>;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A model folder with random weights: the tiny Llama fixture's config over the ChatML
/// tokenizer's vocabulary, and that tokenizer with SmolLM2's chat template.
fn tiny_model(dir: &Path) -> Result<(), Error> {
    let tokenizer_dir = repo("tests/fixtures/tokenizer/chatml");
    for file in ["tokenizer.json", "generation_config.json"] {
        std::fs::copy(tokenizer_dir.join(file), dir.join(file))?;
    }
    let mut tokenizer_config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        tokenizer_dir.join("tokenizer_config.json"),
    )?)?;
    tokenizer_config["chat_template"] =
        std::fs::read_to_string(repo("tests/fixtures/chat/smollm2.jinja"))?.into();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        tokenizer_config.to_string(),
    )?;

    let vocab = Tokenizer::load(dir)?.vocab_size();
    let fixture = repo("tests/fixtures/hf/llama_gqa_tied/config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture)?)?;
    config["vocab_size"] = vocab.into();
    std::fs::write(dir.join("config.json"), config.to_string())?;

    save_random_model(dir, 7, 0.05)?;
    Ok(())
}

fn main() -> Result<(), Error> {
    let work = tempfile::tempdir()?;
    let model_dir = match std::env::var_os("KILN_EXAMPLE_MODEL") {
        Some(dir) => PathBuf::from(dir),
        None => {
            tiny_model(work.path())?;
            work.path().to_path_buf()
        }
    };
    let ops = Arc::new(Ops::new(Device::cpu()));
    let model = Model::load(&model_dir, ops, Precision::F32)?;
    let tokenizer = Tokenizer::load(&model_dir)?;

    // Chat records -> examples whose targets are the assistant's tokens.
    let data = repo("examples/data/weather/train.jsonl");
    let options = DataOptions::default();
    let source = DataSource {
        path: &data,
        tokenizer: Some(&tokenizer),
        vocab: model.config.vocab,
        options: &options,
    };
    let (store, report) = load_in_memory(&source)?;
    println!(
        "{}: {} examples, {} tokens, {} targets",
        data.display(),
        report.examples,
        report.tokens,
        report.targets
    );
    let (examples, _) =
        Examples::prepare(Arc::new(store), 512, LongExamples::Truncate, "train.jsonl")?;

    let options = TrainOptions {
        lora: Some(LoraOptions {
            spec: LoraSpec {
                rank: 8,
                alpha: 16.0,
                rslora: false,
                dropout: 0.0,
                targets: Target::ALL.to_vec(),
            },
            plus_ratio: 16.0,
            adapter: None,
        }),
        optimizer: OptimizerConfig {
            lr: 3e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
            schedule: Schedule {
                kind: ScheduleKind::Cosine,
                warmup: 0,
                total: 0,
                floor: 0.1,
            },
        },
        max_seq_len: 512,
        tokens_per_step: 1024,
        length: Length::Steps(12),
        warmup_steps: Some(1),
        seed: 1,
        recompute: false,
        eval_every: 0,
        save_every: 6,
        keep: 1,
    };
    let mut trainer = Trainer::new(model, &model_dir, options, examples, None)?;
    let out = work.path().join("run");
    let mut losses = vec![];
    let end = trainer.run(&out, &AtomicBool::new(false), |m| {
        println!(
            "step {:>2}  loss {:.4}  grad norm {:.3}",
            m.step, m.loss, m.grad_norm
        );
        losses.push(m.loss);
    })?;
    let RunEnd::Finished { output } = end else {
        return Err("the run was interrupted".into());
    };
    println!("adapter: {}", output.display());
    let (first, last) = (losses[0], *losses.last().unwrap());
    if last.partial_cmp(&first) != Some(std::cmp::Ordering::Less) {
        return Err(format!("the loss did not fall: {first} -> {last}").into());
    }

    // Greedy answers of the fine-tuned model (adapters attached) to held-out prompts.
    let prompts = read_task_prompts(&repo("examples/data/weather/heldout.jsonl"))?;
    let mut hits = 0;
    for (i, p) in prompts.iter().enumerate().take(4) {
        let got = answer(&trainer.model, &tokenizer, p, 24)?;
        hits += usize::from(exact_match(&got, &p.expected));
        if i < 2 {
            println!(
                "{}\n  expected {}\n  got      {}",
                p.question(),
                p.expected,
                got
            );
        }
    }
    println!("loss {first:.3} -> {last:.3}; exact match {hits}/4 (a tiny random model: the loss is the point)");
    Ok(())
}

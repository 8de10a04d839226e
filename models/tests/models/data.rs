//! Datasets: chat templates' assistant masks against transformers (tests/fixtures/chat), the
//! formats and their targets, every kind of bad record named by file and line, Parquet read
//! like JSONL, the token cache, and Best-Fit-Decreasing packing's invariants and efficiency.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_models::batch::{Batch, Sequence, IGNORE_INDEX};
use kiln_models::config::ModelConfig;
use kiln_models::data::{
    load_cached, load_sequences, DataOptions, DataReport, DataSource, Format, TokenStore,
};
use kiln_models::data_plan::{DataPlan, Examples, LongExamples};
use kiln_models::model::{Model, Pass};
use kiln_models::precision::Precision;
use kiln_models::rng::SplitMix64;
use kiln_models::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
use kiln_models::HostTensor;
use proptest::prelude::*;
use serde_json::Value;

use crate::hf::{cpu_ops, fixture_dir};

fn repo(path: &str) -> PathBuf {
    crate::repo_root().join(path)
}

fn tokenizer(folder: &str) -> Tokenizer {
    Tokenizer::load(repo("tests/fixtures/tokenizer").join(folder)).unwrap()
}

/// The tokenizer of `folder` with the chat template of `tests/fixtures/chat/FILE`.
fn with_template(folder: &str, file: &str, variables: &Value) -> Tokenizer {
    let mut t = tokenizer(folder);
    let path = repo("tests/fixtures/chat").join(file);
    let source = std::fs::read_to_string(&path).unwrap();
    let mut template = ChatTemplate::new(source, path.display().to_string()).unwrap();
    for (k, v) in variables.as_object().unwrap() {
        template.set_variable(k, v);
    }
    t.set_chat_template(template);
    t
}

fn messages(v: &Value) -> Vec<ChatMessage> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

fn options(format: Option<Format>, train_on_prompt: bool, skip_invalid: bool) -> DataOptions {
    DataOptions {
        format,
        train_on_prompt,
        skip_invalid,
    }
}

fn read(
    path: &Path,
    tokenizer: Option<&Tokenizer>,
    options: &DataOptions,
) -> kiln_models::Result<(Vec<Sequence>, DataReport)> {
    load_sequences(&DataSource {
        path,
        tokenizer,
        vocab: 4096,
        options,
    })
}

fn write(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[test]
fn chat_masks_match_transformers_for_the_smollm2_qwen25_and_llama32_templates() {
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("tests/fixtures/chat/expected.json")).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for case in expected["cases"].as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let conv = case["conversation"].as_str().unwrap();
        let want_ids: Vec<u32> = case["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let want_mask: Vec<bool> = case["assistant_mask"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() == 1)
            .collect();
        // The published template (prefix by prefix) and the annotated one (generation blocks)
        // must both give transformers' text, ids and mask.
        for file in [format!("{name}.jinja"), format!("{name}.generation.jinja")] {
            let t = with_template(
                case["tokenizer"].as_str().unwrap(),
                &file,
                &case["variables"],
            );
            assert_eq!(
                t.chat_template().unwrap().has_generation_blocks(),
                file.contains("generation")
            );
            let got = t.encode_chat(&messages(&case["messages"])).unwrap();
            assert_eq!(got.text, case["text"].as_str().unwrap(), "{file} {conv}");
            assert_eq!(got.input_ids, want_ids, "{file} {conv}");
            assert_eq!(got.assistant_mask, want_mask, "{file} {conv}");
            checked += 1;
        }
    }
    assert_eq!(checked, 36);
}

#[test]
fn each_format_has_its_targets_and_ends_with_a_target_eos() {
    let dir = tempfile::tempdir().unwrap();
    let t = with_template(
        "chatml",
        "qwen2.5.jinja",
        &Value::Object(Default::default()),
    );
    let eos = t.eos_id().unwrap();
    assert_eq!(eos, t.token_to_id("<|im_end|>").unwrap());
    let opts = options(None, false, false);

    // text: every token a target, EOS appended once.
    let path = write(
        dir.path(),
        "text.jsonl",
        &[
            r#"{"text": "the model reads a token"}"#.into(),
            String::new(),
            r#"{"text": "ends with eos<|im_end|>", "id": 3}"#.into(),
        ],
    );
    let (seqs, report) = read(&path, Some(&t), &opts).unwrap();
    assert_eq!(
        (report.format, report.records, report.examples),
        (Some(Format::Text), 2, 2)
    );
    let mut want = t.encode("the model reads a token", true).unwrap();
    want.push(eos);
    assert_eq!(seqs[0].input_ids, want);
    assert_eq!(
        seqs[0].labels.as_deref(),
        Some(&want.iter().map(|&i| i as i32).collect::<Vec<_>>()[..])
    );
    assert_eq!(seqs[1].input_ids.iter().filter(|&&i| i == eos).count(), 1);

    // prompt/completion: the completion and EOS are targets, the prompt is not.
    let path = write(
        dir.path(),
        "pc.jsonl",
        &[r#"{"prompt": "2 + 2 =", "completion": " 4"}"#.into()],
    );
    let (seqs, _) = read(&path, Some(&t), &opts).unwrap();
    let prompt = t.encode("2 + 2 =", true).unwrap();
    let completion = t.encode(" 4", false).unwrap();
    let s = &seqs[0];
    assert_eq!(s.input_ids.len(), prompt.len() + completion.len() + 1);
    let labels = s.labels.as_ref().unwrap();
    assert!(labels[..prompt.len()].iter().all(|&l| l == IGNORE_INDEX));
    assert_eq!(
        labels[prompt.len()..labels.len() - 1],
        completion.iter().map(|&i| i as i32).collect::<Vec<_>>()[..]
    );
    assert_eq!(*labels.last().unwrap(), eos as i32);
    let (seqs, _) = read(&path, Some(&t), &options(None, true, false)).unwrap();
    assert!(seqs[0]
        .labels
        .as_ref()
        .unwrap()
        .iter()
        .all(|&l| l != IGNORE_INDEX));

    // messages: the assistant's tokens (and its <|im_end|>) are targets, nothing else.
    let path = write(
        dir.path(),
        "chat.jsonl",
        &[r#"{"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "Hello!"}]}"#.into()],
    );
    let (seqs, _) = read(&path, Some(&t), &opts).unwrap();
    let chat = t
        .encode_chat(&[
            ChatMessage::new("user", "hello"),
            ChatMessage::new("assistant", "Hello!"),
        ])
        .unwrap();
    let labels = seqs[0].labels.as_ref().unwrap();
    for ((&id, &l), &m) in chat.input_ids.iter().zip(labels).zip(&chat.assistant_mask) {
        assert_eq!(l, if m { id as i32 } else { IGNORE_INDEX });
    }
    let targets: Vec<u32> = labels
        .iter()
        .filter(|&&l| l >= 0)
        .map(|&l| l as u32)
        .collect();
    assert_eq!(t.decode(&targets, false).unwrap(), "Hello!<|im_end|>");
    // Conversational prompt/completion (TRL's form): only the completion's assistant turn is a
    // target, not the prompt's few-shot one.
    let conv = write(
        dir.path(),
        "conv.jsonl",
        &[r#"{"prompt": [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "2"}, {"role": "user", "content": "2 + 2?"}], "completion": [{"role": "assistant", "content": "4"}]}"#.into()],
    );
    let (conv, report) = read(&conv, Some(&t), &opts).unwrap();
    assert_eq!(report.format, Some(Format::PromptCompletion));
    let targets: Vec<u32> = conv[0]
        .labels
        .as_ref()
        .unwrap()
        .iter()
        .filter(|&&l| l >= 0)
        .map(|&l| l as u32)
        .collect();
    assert_eq!(t.decode(&targets, false).unwrap(), "4<|im_end|>");

    // Content as a list of text parts reads as their joined text.
    let parts = write(
        dir.path(),
        "parts.jsonl",
        &[r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]}, {"role": "assistant", "content": "Hello!"}]}"#.into()],
    );
    assert_eq!(read(&parts, Some(&t), &opts).unwrap().0, seqs);

    // input_ids: exactly as given, nothing added.
    let path = write(
        dir.path(),
        "ids.jsonl",
        &[r#"{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}"#.into()],
    );
    let (seqs, _) = read(&path, None, &opts).unwrap();
    assert_eq!(seqs[0].input_ids, vec![5, 6, 7]);
    assert_eq!(seqs[0].labels, Some(vec![-100, 6, 7]));
}

#[test]
fn bad_records_name_the_file_and_line_or_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let t = with_template(
        "chatml",
        "smollm2.jinja",
        &Value::Object(Default::default()),
    );
    let good = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#;
    let cases: [(&str, &str); 9] = [
        ("{\"messages\": [", "not JSON"),
        (r#"{"messages": "hi"}"#, "`messages` must be a list"),
        (
            r#"{"messages": [{"role": "user"}]}"#,
            "`content` must be a string",
        ),
        (
            r#"{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}"#,
            "unknown role `robot`",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "nobody answers"}]}"#,
            "no assistant token",
        ),
        (
            r#"{"text": "a text line"}"#,
            "a text record in a messages file",
        ),
        (
            r#"{"foo": 1}"#,
            "a messages record needs `messages` (found keys: `foo`)",
        ),
        ("[1, 2]", "expected a JSON object"),
        (
            "{\"messages\": [{\"role\": \"user\", \"content\": \"\u{00e9}\"}]}",
            "not UTF-8",
        ),
    ];
    for (i, (line, problem)) in cases.iter().enumerate() {
        let mut bytes = format!("{good}\n\n{line}\n{good}\n").into_bytes();
        if problem == &"not UTF-8" {
            // Latin-1 é instead of UTF-8.
            let at = bytes.windows(2).position(|w| w == [0xc3, 0xa9]).unwrap();
            bytes.splice(at..at + 2, [0xe9]);
        }
        let path = dir.path().join(format!("bad{i}.jsonl"));
        std::fs::write(&path, &bytes).unwrap();
        let e = read(&path, Some(&t), &options(None, false, false))
            .unwrap_err()
            .to_string();
        let at = format!("bad{i}.jsonl:3");
        assert!(e.contains(&at) && e.contains(problem), "{problem}: {e}");
        if problem.contains("messages file") {
            assert!(e.contains(&format!("bad{i}.jsonl:1")), "{e}");
            continue; // A file that mixes formats is an error even when skipping.
        }
        let (seqs, report) = read(&path, Some(&t), &options(None, false, true)).unwrap();
        assert_eq!((seqs.len(), report.skipped_total()), (2, 1), "{problem}");
        assert!(report.first_skipped.unwrap().contains(&at));
    }
    // Token ids outside the vocabulary, with their position.
    let path = write(
        dir.path(),
        "ids.jsonl",
        &[
            r#"{"input_ids": [1, 2]}"#.into(),
            r#"{"input_ids": [1, 5000]}"#.into(),
        ],
    );
    let e = read(&path, None, &options(None, false, false))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ids.jsonl:2") && e.contains("input_ids[1] = 5000"),
        "{e}"
    );
    // An empty file, and a text file without a tokenizer.
    let path = write(dir.path(), "empty.jsonl", &[]);
    let e = read(&path, None, &options(None, false, false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty.jsonl") && e.contains("empty"), "{e}");
    let path = write(dir.path(), "text.jsonl", &[r#"{"text": "hello"}"#.into()]);
    let e = read(&path, None, &options(None, false, false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("text.jsonl:1") && e.contains("tokenizer"), "{e}");
    // A forced format needs its fields.
    let e = read(
        &path,
        Some(&t),
        &options(Some(Format::Messages), false, false),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("text.jsonl:1") && e.contains("needs `messages`"),
        "{e}"
    );
}

#[test]
fn parquet_files_read_like_their_jsonl() {
    let t = with_template(
        "chatml",
        "smollm2.jinja",
        &Value::Object(Default::default()),
    );
    for name in ["chat", "completion"] {
        let dir = repo("tests/fixtures/data");
        let opts = options(None, false, false);
        let (a, ra) = read(&dir.join(format!("{name}.parquet")), Some(&t), &opts).unwrap();
        let (b, rb) = read(&dir.join(format!("{name}.jsonl")), Some(&t), &opts).unwrap();
        assert_eq!(a, b, "{name}");
        assert_eq!((ra.format, ra.records), (rb.format, rb.records));
    }
}

#[test]
fn tokenized_data_is_cached_under_its_contents() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let t = with_template(
        "chatml",
        "smollm2.jinja",
        &Value::Object(Default::default()),
    );
    let lines: Vec<String> = (0..50)
        .map(|i| format!(r#"{{"prompt": "question {i}", "completion": " answer {i}"}}"#))
        .collect();
    let path = write(dir.path(), "d.jsonl", &lines);
    let opts = options(None, false, false);
    let source = DataSource {
        path: &path,
        tokenizer: Some(&t),
        vocab: 4096,
        options: &opts,
    };
    let (first, r1, file1) = load_cached(&source, &cache, &mut |_| {}).unwrap();
    let (second, r2, file2) = load_cached(&source, &cache, &mut |_| {}).unwrap();
    assert!(!r1.cached && r2.cached);
    assert_eq!(file1, file2);
    assert_eq!(r1.examples, r2.examples);
    for i in 0..first.len() {
        assert_eq!(first.example(i), second.example(i));
    }
    // Other options, another template or other data: another entry.
    let train_all = options(None, true, false);
    let (_, r3, file3) = load_cached(
        &DataSource {
            options: &train_all,
            ..source
        },
        &cache,
        &mut |_| {},
    )
    .unwrap();
    assert!(!r3.cached && file3 != file1);
    let other = with_template(
        "chatml",
        "qwen2.5.jinja",
        &Value::Object(Default::default()),
    );
    let (_, _, file4) = load_cached(
        &DataSource {
            tokenizer: Some(&other),
            ..source
        },
        &cache,
        &mut |_| {},
    )
    .unwrap();
    assert!(file4 != file1);
    std::fs::write(&path, lines[..10].join("\n")).unwrap();
    let (s5, r5, file5) = load_cached(&source, &cache, &mut |_| {}).unwrap();
    assert!(!r5.cached && file5 != file1 && s5.len() == 10);
    // A damaged entry is rebuilt, not trusted.
    std::fs::write(&file5, b"KILNTOK1 garbage").unwrap();
    let (s6, r6, _) = load_cached(&source, &cache, &mut |_| {}).unwrap();
    assert!(!r6.cached && s6.len() == 10);
}

/// Log-normal lengths clipped to 32..=1024 (median ~256), seeded.
fn log_normal_lengths(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            // Box-Muller from two uniforms in (0, 1].
            let u1 = (rng.below(1 << 30) as f64 + 1.0) / (1u64 << 30) as f64;
            let u2 = rng.below(1 << 30) as f64 / (1u64 << 30) as f64;
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            ((256f64.ln() + 0.8 * z).exp().round() as usize).clamp(32, 1024)
        })
        .collect()
}

fn plan_of(lengths: &[usize], max_seq_len: usize, tokens_per_step: usize, seed: u64) -> DataPlan {
    let seqs: Vec<Sequence> = lengths
        .iter()
        .enumerate()
        .map(|(s, &n)| Sequence::new((0..n).map(|t| ((s * 7 + t) % 1000) as u32).collect()))
        .collect();
    let store = Arc::new(TokenStore::from_sequences(&seqs).unwrap());
    let (examples, _) =
        Examples::prepare(store, max_seq_len, LongExamples::Split, "lengths").unwrap();
    DataPlan::new(examples, tokens_per_step, max_seq_len, seed).unwrap()
}

#[test]
fn best_fit_decreasing_packs_log_normal_lengths_at_least_95_percent_full() {
    let lengths = log_normal_lengths(20_000, 5);
    let mut sorted = lengths.clone();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2];
    assert!((200..=320).contains(&median), "median {median}");
    let plan = plan_of(&lengths, 4096, 1 << 20, 1);
    let efficiency = plan.packing_efficiency();
    eprintln!(
        "BFD: 20,000 log-normal lengths (median {median}) into bins of 4096: {efficiency:.4}"
    );
    assert!(efficiency >= 0.95, "efficiency {efficiency}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every token lands exactly once per epoch, in one bin within capacity, each example
    /// contiguous; the packed targets are the inputs shifted once, the first token of every
    /// example never a target.
    #[test]
    fn packing_loses_nothing_and_shifts_targets_once(
        lengths in proptest::collection::vec(1usize..40, 1..60),
        max_seq_len in 8usize..64,
        tokens_per_step in 8usize..200,
        seed in 0u64..1000,
    ) {
        let plan = plan_of(&lengths, max_seq_len, tokens_per_step, seed);
        let examples = &plan.examples;
        let mut seen = vec![0usize; examples.len()];
        let mut cursor = kiln_models::data_plan::Cursor { epoch: 0, position: 0 };
        while cursor.epoch == 0 {
            let step = plan.step(cursor);
            let step_tokens: usize = step.micro_batches.iter().flatten().map(|&i| examples.example_len(i)).sum();
            prop_assert!(step.micro_batches.len() == 1 || step_tokens <= tokens_per_step);
            for bin in &step.micro_batches {
                let seqs: Vec<Sequence> = bin.iter().map(|&i| examples.get(i)).collect();
                let batch = Batch::pack(&seqs.iter().collect::<Vec<_>>(), 1000).unwrap();
                prop_assert!(batch.tokens() <= max_seq_len);
                for (k, &i) in bin.iter().enumerate() {
                    seen[i] += 1;
                    let (a, b) = (batch.cu_seqlens[k], batch.cu_seqlens[k + 1]);
                    let s = &seqs[k];
                    prop_assert_eq!(&batch.input_ids[a..b], &s.input_ids.iter().map(|&x| x as i32).collect::<Vec<_>>()[..]);
                    for t in a..b {
                        prop_assert_eq!(batch.positions[t] as usize, t - a);
                        let want = if t + 1 < b { batch.input_ids[t + 1] } else { IGNORE_INDEX };
                        prop_assert_eq!(batch.targets[t], want);
                    }
                }
            }
            cursor = step.next;
        }
        prop_assert!(seen.iter().all(|&n| n == 1));
        // Splitting keeps every target: the pieces predict each input token but the first once.
        let targets: usize = (0..examples.len()).map(|i| examples.example_len(i) - 1).sum();
        let want: usize = lengths.iter().map(|n| n - 1).sum();
        prop_assert_eq!(targets, want);
    }
}

/// A model with random weights shaped like the tiny Llama fixture, over `vocab` tokens.
fn random_model(vocab: usize) -> Model {
    let mut config = ModelConfig::load(fixture_dir("llama_gqa_tied").join("config.json")).unwrap();
    config.vocab = vocab;
    let shapes: std::collections::HashMap<String, Vec<usize>> =
        config.parameters().into_iter().collect();
    let mut rng = SplitMix64::new(9);
    Model::from_tensors(config, cpu_ops(), Precision::F32, |name| {
        let shape = shapes[name].clone();
        let norm = name.ends_with("norm.weight");
        let data = (0..shape.iter().product::<usize>())
            .map(|_| {
                let u = rng.below(1 << 24) as f32 / (1 << 24) as f32 - 0.5;
                if norm {
                    1.0 + 0.2 * u
                } else {
                    0.4 * u
                }
            })
            .collect();
        Ok(HostTensor::new(shape, data))
    })
    .unwrap()
}

/// Issue 7's check fed from a real chat JSONL through the tokenizer and the template: packed
/// together, each conversation's per-token losses are what it gets alone, and exactly its
/// assistant tokens are predicted.
#[test]
fn a_packed_batch_of_chat_examples_gives_each_its_own_losses() {
    let dir = tempfile::tempdir().unwrap();
    let t = with_template(
        "chatml",
        "qwen2.5.jinja",
        &Value::Object(Default::default()),
    );
    let conversations = [
        r#"{"messages": [{"role": "user", "content": "What is a kiln?"}, {"role": "assistant", "content": "A hot oven for clay."}]}"#,
        r#"{"messages": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Fast?"}, {"role": "assistant", "content": "Yes."}, {"role": "user", "content": "Correct?"}, {"role": "assistant", "content": "Checked."}]}"#,
        r#"{"messages": [{"role": "user", "content": "write the next token"}, {"role": "assistant", "content": "the model reads a token and writes the next one"}]}"#,
    ];
    let lines: Vec<String> = conversations.iter().map(|s| s.to_string()).collect();
    let path = write(dir.path(), "chat.jsonl", &lines);
    let (seqs, report) = read(&path, Some(&t), &options(None, false, false)).unwrap();
    assert_eq!(report.examples, 3);
    let vocab = t.vocab_size();
    let model = random_model(vocab);
    let refs: Vec<&Sequence> = seqs.iter().collect();
    let batch = Batch::pack(&refs, vocab).unwrap();
    let targets: usize = seqs
        .iter()
        .map(|s| {
            s.labels.as_ref().unwrap()[1..]
                .iter()
                .filter(|&&l| l >= 0)
                .count()
        })
        .sum();
    assert_eq!(batch.predicted(), targets);
    let together = model
        .forward(&batch.upload(model.ops()).unwrap(), Pass::Inference)
        .unwrap()
        .token_losses()
        .unwrap();
    for (s, seq) in seqs.iter().enumerate() {
        let alone = Batch::pack(&[seq], vocab).unwrap();
        let losses = model
            .forward(&alone.upload(model.ops()).unwrap(), Pass::Inference)
            .unwrap()
            .token_losses()
            .unwrap();
        let start = batch.cu_seqlens[s];
        for (k, &a) in losses.iter().enumerate() {
            let b = together[start + k];
            assert!(
                (a - b).abs() <= 1e-5,
                "example {s} position {k}: alone {a}, packed {b}"
            );
            assert_eq!(
                a != 0.0,
                alone.targets[k] != IGNORE_INDEX,
                "example {s} position {k}"
            );
        }
    }
}

#[test]
fn held_out_prompts_read_their_expected_answers() {
    use kiln_models::task::{exact_match, read_task_prompts};
    let prompts = read_task_prompts(&repo("examples/data/weather/heldout.jsonl")).unwrap();
    assert_eq!(prompts.len(), 40);
    assert!(prompts[0].expected.starts_with("city: "));
    assert_eq!(prompts[0].conversation.last().unwrap().role, "user");
    assert!(exact_match(
        " city: A; temp: 1; sky: x\n",
        "city: A; temp: 1; sky: x"
    ));
    assert!(!exact_match(
        "city: A; temp: 2; sky: x",
        "city: A; temp: 1; sky: x"
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "p.jsonl",
        &[r#"{"messages": [{"role": "user", "content": "hi"}]}"#.into()],
    );
    let e = read_task_prompts(&path).unwrap_err().to_string();
    assert!(
        e.contains("p.jsonl:1") && e.contains("expected answer"),
        "{e}"
    );
}

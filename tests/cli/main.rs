//! The `kiln` command line, run as a user runs it: `kiln eval` on the committed Hugging Face
//! fixtures against their float64 references, and bad input (a malformed config, a missing
//! tensor, a token id past the vocabulary) exiting 1 with a message that names the file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("running kiln")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

fn reference(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The reference's sequences as `kiln eval` input lines.
fn reference_jsonl(r: &Value) -> String {
    r["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let mut line = serde_json::json!({ "input_ids": s["input_ids"] });
            if !s["labels"].is_null() {
                line["labels"] = s["labels"].clone();
            }
            format!("{line}\n")
        })
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn eval_matches_the_transformers_reference_per_token() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["qwen2_gqa_bias_untied", "llama_gqa_tied"] {
        let r = reference(name);
        let data = dir.path().join(format!("{name}.jsonl"));
        std::fs::write(&data, reference_jsonl(&r)).unwrap();
        let losses = dir.path().join(format!("{name}.losses.jsonl"));
        let model = fixture(name);
        let out = kiln(&[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--precision",
            "f32",
            "--json",
            "--per-token-losses",
            losses.to_str().unwrap(),
            "--batch-tokens",
            "40",
        ]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let loss = report["loss"].as_f64().unwrap();
        let want = r["loss"].as_f64().unwrap();
        assert!((loss - want).abs() <= 1e-4, "{name}: loss {loss} vs {want}");
        assert_eq!(report["tokens"], r["tokens"]);
        let perplexity = report["perplexity"].as_f64().unwrap();
        assert!((perplexity - loss.exp()).abs() <= 1e-9 * perplexity);

        // One line per input sequence, in input order, n - 1 losses for n tokens (null where
        // the label is ignored), each within 1e-4 of the reference.
        let text = std::fs::read_to_string(&losses).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let sequences = r["sequences"].as_array().unwrap();
        assert_eq!(lines.len(), sequences.len());
        for (i, (line, seq)) in lines.iter().zip(sequences).enumerate() {
            assert_eq!(line["index"], i);
            let (got, want) = (
                line["losses"].as_array().unwrap(),
                seq["losses"].as_array().unwrap(),
            );
            assert_eq!(got.len(), want.len(), "{name}: sequence {i}");
            for (g, w) in got.iter().zip(want) {
                match (g.as_f64(), w.as_f64()) {
                    (Some(g), Some(w)) => assert!((g - w).abs() <= 1e-4, "{name} {i}: {g} vs {w}"),
                    (None, None) => {}
                    other => panic!("{name} {i}: ignored positions differ: {other:?}"),
                }
            }
        }
    }
}

/// Runs `kiln eval` on `model` with a one-line dataset and returns its stderr, asserting it
/// failed with exit code 1.
fn eval_fails(model: &Path, data_line: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.jsonl");
    std::fs::write(&data, data_line).unwrap();
    let out = kiln(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    stderr(&out)
}

/// A copy of fixture `name` in a temporary folder, for breaking.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(name).join(file), dir.path().join(file)).unwrap();
    }
    dir
}

#[test]
fn bad_input_exits_1_naming_the_file_and_the_problem() {
    let good = fixture("llama_gqa_tied");
    let msg = eval_fails(&good, "{\"input_ids\": [1, 2, 256]}\n");
    assert!(
        msg.contains("data.jsonl:1") && msg.contains("vocabulary"),
        "{msg}"
    );
    let msg = eval_fails(&good, "{\"input_ids\": [1, 2]}\n{\"input_ids\": \"x\"}\n");
    assert!(msg.contains("data.jsonl:2"), "{msg}");

    let broken = copy_fixture("llama_gqa_tied");
    let config = broken.path().join("config.json");
    std::fs::write(&config, "{\"model_type\": \"llama\", \"hidden_size\": 64").unwrap();
    let msg = eval_fails(broken.path(), "{\"input_ids\": [1, 2]}\n");
    assert!(msg.contains("config.json"), "{msg}");
    std::fs::write(&config, "{\"model_type\": \"gpt2\"}").unwrap();
    let msg = eval_fails(broken.path(), "{\"input_ids\": [1, 2]}\n");
    assert!(msg.contains("gpt2") && msg.contains("llama"), "{msg}");

    // Well-formed configs the kernels cannot run yet: refused naming the file and the reason.
    let broken = copy_fixture("llama_gqa_tied");
    let config = broken.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let mut value: Value = serde_json::from_str(&text).unwrap();
    value["head_dim"] = 12.into();
    std::fs::write(&config, value.to_string()).unwrap();
    let msg = eval_fails(broken.path(), "{\"input_ids\": [1, 2]}\n");
    assert!(
        msg.contains("config.json") && msg.contains("head_dim 12"),
        "{msg}"
    );
    let mut value: Value = serde_json::from_str(&text).unwrap();
    value["rope_scaling"] = serde_json::json!({
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64
    });
    std::fs::write(&config, value.to_string()).unwrap();
    let msg = eval_fails(broken.path(), "{\"input_ids\": [1, 2]}\n");
    assert!(
        msg.contains("config.json") && msg.contains("rope_scaling"),
        "{msg}"
    );

    // A config that asks for a tensor the file lacks: an untied head.
    let broken = copy_fixture("llama_gqa_tied");
    let config = broken.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "\"tie_word_embeddings\": true",
            "\"tie_word_embeddings\": false",
        ),
    )
    .unwrap();
    let msg = eval_fails(broken.path(), "{\"input_ids\": [1, 2]}\n");
    assert!(
        msg.contains("model.safetensors") && msg.contains("lm_head.weight"),
        "{msg}"
    );

    // A truncated weights file.
    let broken = copy_fixture("llama_gqa_tied");
    let weights = broken.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let msg = eval_fails(broken.path(), "{\"input_ids\": [1, 2]}\n");
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn import_writes_a_folder_eval_reads_and_bad_ggufs_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/tiny-llama.gguf");
    let out = dir.path().join("tiny");
    let run = kiln(&[
        "import",
        gguf.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    // The imported folder evaluates, from text through its own tokenizer.
    let data = dir.path().join("text.jsonl");
    std::fs::write(&data, "{\"text\": \"hello world, hello kiln\"}\n").unwrap();
    let run = kiln(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert!(report["loss"].as_f64().unwrap().is_finite() && report["tokens"].as_u64().unwrap() > 0);

    // A truncated file and one with a corrupted magic: exit 1, the file named.
    let bytes = std::fs::read(&gguf).unwrap();
    for (what, broken) in [
        ("truncated", bytes[..bytes.len() / 3].to_vec()),
        ("bad magic", [b"GGUX".as_slice(), &bytes[4..]].concat()),
    ] {
        let bad = dir.path().join("bad.gguf");
        std::fs::write(&bad, broken).unwrap();
        let target = dir.path().join(format!("out-{}", what.len()));
        let run = kiln(&[
            "import",
            bad.to_str().unwrap(),
            "--out",
            target.to_str().unwrap(),
        ]);
        assert_eq!(run.status.code(), Some(1), "{what}: {}", stderr(&run));
        assert!(
            stderr(&run).contains("bad.gguf"),
            "{what}: {}",
            stderr(&run)
        );
        assert!(
            !target.exists(),
            "{what}: a failed import left {}",
            target.display()
        );
    }
}

//! The `kiln` command line, run as a user runs it: `kiln eval` on the committed Hugging Face
//! fixtures against their float64 references, and bad input (a malformed config, a missing
//! tensor, a token id past the vocabulary) exiting 1 with a message that names the file; `kiln
//! compile`'s decision printers (`compile`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod compile;
mod main_job;
mod train;

fn kiln(args: &[&str]) -> Output {
    // Token caches go to one folder of the test run, not the user's cache.
    let cache = std::env::temp_dir().join(format!("kiln-cli-tests-{}", std::process::id()));
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_CACHE_DIR", cache)
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

/// `kiln eval --json --per-token-losses` of `model` (optionally with `extra` arguments) on the
/// sequences of reference `r`; returns the per-sequence losses.
fn eval_losses(model: &Path, r: &Value, dir: &Path, extra: &[&str]) -> Vec<Vec<Option<f64>>> {
    let data = dir.join("data.jsonl");
    std::fs::write(&data, reference_jsonl(r)).unwrap();
    let losses = dir.join("losses.jsonl");
    let mut args = vec![
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--precision",
        "f32",
        "--per-token-losses",
        losses.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = kiln(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::read_to_string(&losses)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["losses"]
                .as_array()
                .unwrap()
                .iter()
                .map(Value::as_f64)
                .collect()
        })
        .collect()
}

fn assert_losses_match(what: &str, got: &[Vec<Option<f64>>], r: &Value) {
    let sequences = r["sequences"].as_array().unwrap();
    assert_eq!(got.len(), sequences.len(), "{what}");
    for (i, (g, seq)) in got.iter().zip(sequences).enumerate() {
        let want: Vec<Option<f64>> = seq["losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(Value::as_f64)
            .collect();
        assert_eq!(g.len(), want.len(), "{what}: sequence {i}");
        for (a, b) in g.iter().zip(&want) {
            match (a, b) {
                (Some(a), Some(b)) => assert!((a - b).abs() <= 1e-4, "{what} {i}: {a} vs {b}"),
                (None, None) => {}
                other => panic!("{what} {i}: ignored positions differ: {other:?}"),
            }
        }
    }
}

/// The f32 values and shape of tensor `name` of a safetensors file.
fn read_tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>, Value) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let t = &header[name];
    assert_eq!(t["dtype"], "F32");
    let shape: Vec<usize> = t["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let (a, b) = (
        t["data_offsets"][0].as_u64().unwrap() as usize,
        t["data_offsets"][1].as_u64().unwrap() as usize,
    );
    let data = bytes[8 + n + a..8 + n + b]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (shape, data, header["__metadata__"].clone())
}

#[test]
fn export_merges_an_adapter_into_a_folder_and_a_gguf_that_give_peft_losses() {
    for name in ["qwen2_gqa_bias_untied", "llama_mha_untied_bias"] {
        let dir = tempfile::tempdir().unwrap();
        let adapter = fixture(name).join("adapter");
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(adapter.join("reference.json")).unwrap())
                .unwrap();
        let out = dir.path().join("merged");
        let gguf = dir.path().join("merged.gguf");
        let run = kiln(&[
            "export",
            "--model",
            fixture(name).to_str().unwrap(),
            "--adapter",
            adapter.to_str().unwrap(),
            "--merge",
            "--out",
            out.to_str().unwrap(),
            "--gguf",
            gguf.to_str().unwrap(),
            "--gguf-type",
            "q8_0",
        ]);
        assert!(run.status.success(), "{name}: {}", stderr(&run));
        let printed = String::from_utf8_lossy(&run.stdout);
        assert!(
            printed.contains(out.to_str().unwrap()) && printed.contains("merged.gguf"),
            "{printed}"
        );
        assert!(
            printed.contains("Q8_0") && printed.contains("bytes"),
            "{printed}"
        );
        assert!(stderr(&run).contains("no tokenizer"), "{}", stderr(&run));
        assert_eq!(&std::fs::read(&gguf).unwrap()[..4], b"GGUF");

        // merged = base + adapter: the folder gives PEFT's per-token losses, as the base with
        // `--adapter` does, and not the base's.
        let merged = eval_losses(&out, &r, dir.path(), &[]);
        assert_losses_match(&format!("{name} merged"), &merged, &r);
        let adapter_arg = adapter.to_str().unwrap();
        let with_adapter = eval_losses(&fixture(name), &r, dir.path(), &["--adapter", adapter_arg]);
        assert_losses_match(&format!("{name} --adapter"), &with_adapter, &r);
        let base = eval_losses(&fixture(name), &r, dir.path(), &[]);
        assert_losses_match(&format!("{name} base"), &base, &reference(name));

        // --logits: every position, rows in input order, equal to PEFT's logits rows
        let logits = dir.path().join("logits.safetensors");
        let data = dir.path().join("data.jsonl");
        let run = kiln(&[
            "eval",
            "--model",
            out.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--logits",
            logits.to_str().unwrap(),
        ]);
        assert!(run.status.success(), "{}", stderr(&run));
        let (shape, values, metadata) = read_tensor(&logits, "logits");
        let lengths: Vec<usize> = r["sequences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["input_ids"].as_array().unwrap().len())
            .collect();
        let vocab = shape[1];
        assert_eq!(shape[0], lengths.iter().sum::<usize>());
        let starts: Vec<usize> =
            serde_json::from_str(metadata["sequence_starts"].as_str().unwrap()).unwrap();
        assert_eq!(starts.len(), lengths.len());
        for row in r["logits"].as_array().unwrap() {
            let (s, p) = (
                row["sequence"].as_u64().unwrap() as usize,
                row["position"].as_u64().unwrap() as usize,
            );
            let got = &values[(starts[s] + p) * vocab..(starts[s] + p + 1) * vocab];
            for (g, w) in got.iter().zip(row["values"].as_array().unwrap()) {
                let w = w.as_f64().unwrap();
                assert!(
                    (*g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{name} {s}/{p}"
                );
            }
        }
    }
}

#[test]
fn bad_exports_exit_1_naming_the_file_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("qwen2_gqa_bias_untied");
    let out = dir.path().join("out");
    let gguf = dir.path().join("out.gguf");
    let (out_s, gguf_s) = (out.to_str().unwrap(), gguf.to_str().unwrap());
    let fails = |args: &[&str], want: &[&str]| {
        let run = kiln(args);
        assert_eq!(run.status.code(), Some(1), "{args:?}: {}", stderr(&run));
        let msg = stderr(&run);
        for w in want {
            assert!(msg.contains(w), "{args:?}: `{w}` not in: {msg}");
        }
        assert!(
            !out.exists() && !gguf.exists(),
            "{args:?} left output behind"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.iter().all(|n| n == "file.txt"), "{args:?}: {left:?}");
    };
    let missing = dir.path().join("no-such-model");
    fails(
        &[
            "export",
            "--model",
            missing.to_str().unwrap(),
            "--out",
            out_s,
        ],
        &["no-such-model"],
    );
    // an adapter of another model: its tensors do not fit
    let other = fixture("llama_mha_untied_bias").join("adapter");
    let other_s = other.to_str().unwrap();
    let b = base.to_str().unwrap();
    fails(
        &[
            "export",
            "--model",
            b,
            "--adapter",
            other_s,
            "--merge",
            "--out",
            out_s,
            "--gguf",
            gguf_s,
        ],
        &["adapter_model.safetensors"],
    );
    let adapter = base.join("adapter");
    fails(
        &[
            "export",
            "--model",
            b,
            "--adapter",
            adapter.to_str().unwrap(),
            "--out",
            out_s,
        ],
        &["PEFT", "--merge", "adapter"],
    );
    fails(&["export", "--model", b], &["--out", "--gguf"]);
    // an output under a plain file cannot be written
    let file = dir.path().join("file.txt");
    std::fs::write(&file, "x").unwrap();
    let under = file.join("sub");
    fails(
        &["export", "--model", b, "--out", under.to_str().unwrap()],
        &["file.txt"],
    );
    let under_gguf = file.join("m.gguf");
    fails(
        &[
            "export",
            "--model",
            b,
            "--gguf",
            under_gguf.to_str().unwrap(),
        ],
        &["m.gguf"],
    );
}

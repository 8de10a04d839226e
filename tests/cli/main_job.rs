//! The main job (`scripts/run`) at tiny scale, end to end through the CLI: a random model over
//! the small ChatML tokenizer with SmolLM2's template, fine-tuned on the weather-record chats
//! with checkpoints, resumed, merged and exported, compared with its base on held-out prompts,
//! generated from, and its loss curve drawn.

use std::path::Path;

use kiln::models::random_init::save_random_model;

use super::{kiln, stderr};

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn tiny_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let tokenizer = repo("tests/fixtures/tokenizer/chatml");
    for file in ["tokenizer.json", "generation_config.json"] {
        std::fs::copy(tokenizer.join(file), dir.join(file)).unwrap();
    }
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tokenizer.join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    config["chat_template"] = std::fs::read_to_string(repo("tests/fixtures/chat/smollm2.jinja"))
        .unwrap()
        .into();
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let mut model: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("tests/fixtures/hf/llama_gqa_tied/config.json")).unwrap(),
    )
    .unwrap();
    model["vocab_size"] = 640.into();
    std::fs::write(dir.join("config.json"), model.to_string()).unwrap();
    save_random_model(dir, 3, 0.05).unwrap();
}

fn ok(args: &[&str]) -> String {
    let run = kiln(args);
    assert!(run.status.success(), "{args:?}: {}", stderr(&run));
    String::from_utf8_lossy(&run.stdout).to_string() + &stderr(&run)
}

#[test]
fn the_main_job_at_tiny_scale_trains_resumes_exports_compares_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    tiny_model(&model);
    let (m, out) = (model.to_str().unwrap(), dir.path().join("run"));
    let o = out.to_str().unwrap();
    let data = repo("examples/data/weather/train.jsonl");
    let train = |steps: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--model",
            m,
            "--data",
            data.to_str().unwrap(),
            "--out",
            o,
            "--lora-rank",
            "4",
            "--lr",
            "3e-3",
            "--steps",
            steps,
            "--save-every",
            "2",
            "--max-seq-len",
            "256",
            "--tokens-per-step",
            "256",
            "--precision",
            "f32",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        ok(&args)
    };
    let log = train("4", &["--keep", "0"]);
    assert!(
        log.contains("messages, 480 records -> 480 examples"),
        "{log}"
    );
    assert!(out.join("checkpoint-2").is_dir() && out.join("checkpoint-4").is_dir());
    let straight = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(straight.lines().count(), 4);
    // Resumed from step 2: steps 3 and 4 again, the same losses (bit-exact on the CPU).
    let checkpoint = out.join("checkpoint-2");
    let log = train(
        "4",
        &["--keep", "0", "--resume", checkpoint.to_str().unwrap()],
    );
    assert!(log.contains("resumed from"), "{log}");
    let loss = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].to_string())
            .collect()
    };
    let resumed = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(loss(&resumed), loss(&straight));
    // The loss curve decodes, and is not a blank canvas.
    let decoder = png::Decoder::new(std::fs::File::open(out.join("loss.png")).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((frame.width, frame.height), (1000, 600));
    let distinct: std::collections::HashSet<&[u8]> =
        pixels[..frame.buffer_size()].chunks(3).collect();
    assert!(distinct.len() > 10, "{} colours", distinct.len());

    let merged = dir.path().join("merged");
    let merged_s = merged.to_str().unwrap();
    let adapter = out.join("adapter");
    ok(&[
        "export",
        "--model",
        m,
        "--adapter",
        adapter.to_str().unwrap(),
        "--merge",
        "--out",
        merged_s,
    ]);
    let table = ok(&[
        "compare",
        "--model",
        m,
        "--tuned",
        merged_s,
        "--prompts",
        repo("examples/data/weather/heldout.jsonl")
            .to_str()
            .unwrap(),
        "--max-new-tokens",
        "4",
        "--device",
        "cpu",
    ]);
    assert!(table.contains("40 held-out prompts"), "{table}");
    assert!(table.contains("base ") && table.contains("fine-tuned (") && table.contains("/40 ("));
    assert!(table.contains("prompt 2: "), "{table}");
    let text = ok(&[
        "generate",
        "--model",
        merged_s,
        "--chat",
        "--prompt",
        "Extract the weather record: In Oslo it is 3 degrees and rainy.",
        "--max-new-tokens",
        "4",
        "--precision",
        "f32",
    ]);
    assert!(text.contains("new tokens"), "{text}");
}

//! `kiln train` as a user runs it: LoRA and full fine-tuning on a tiny fixture model whose loss
//! falls, outputs that `kiln eval` reads back, SIGINT saving a checkpoint that `--resume latest`
//! continues, and bad settings or data exiting 1 with the reason.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::{fixture, kiln, stderr};

/// `n` random sequences of 4..=14 token ids below `vocab`, as JSONL.
fn data(dir: &Path, name: &str, n: usize, vocab: u64) -> PathBuf {
    let mut state = 0x5eedu64;
    let mut next = |m: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % m
    };
    let mut text = String::new();
    for _ in 0..n {
        let len = 4 + next(11);
        let ids: Vec<u64> = (0..len).map(|_| next(vocab)).collect();
        text.push_str(&format!("{}\n", serde_json::json!({ "input_ids": ids })));
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn metrics(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const BASE: &[&str] = &[
    "--max-seq-len",
    "16",
    "--tokens-per-step",
    "40",
    "--precision",
    "f32",
    "--device",
    "cpu",
];

fn train(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(BASE);
    args.extend_from_slice(extra);
    kiln(&args)
}

#[test]
fn lora_and_full_runs_learn_and_write_what_eval_reads() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("llama_gqa_tied");
    let d = data(dir.path(), "train.jsonl", 10, 256);
    for (mode, extra) in [
        (
            "adapter",
            &["--lora-rank", "4", "--lr", "5e-3", "--steps", "16"][..],
        ),
        ("model", &["--lr", "2e-3", "--steps", "16"][..]),
    ] {
        let out = dir.path().join(mode);
        let run = train(&model, &d, &out, extra);
        assert!(run.status.success(), "{}", stderr(&run));
        let m = metrics(&out);
        assert_eq!(m.len(), 16);
        let (first, last) = (
            m[0]["loss"].as_f64().unwrap(),
            m[15]["loss"].as_f64().unwrap(),
        );
        assert!(last < 0.8 * first, "{mode}: loss {first} -> {last}");
        // The loss curve is a PNG of 1000 x 600 pixels.
        let png = std::fs::read(out.join("loss.png")).unwrap();
        assert_eq!(
            &png[..8],
            b"\x89PNG\r\n\x1a\n",
            "{mode}: loss.png is not a PNG"
        );
        assert_eq!(&png[12..16], b"IHDR");
        let (w, h) = (
            u32::from_be_bytes(png[16..20].try_into().unwrap()),
            u32::from_be_bytes(png[20..24].try_into().unwrap()),
        );
        assert_eq!((w, h), (1000, 600));
        let again = out.join("again.png");
        let plot = kiln(&[
            "plot",
            out.join("metrics.jsonl").to_str().unwrap(),
            "-o",
            again.to_str().unwrap(),
        ]);
        assert!(plot.status.success(), "{}", stderr(&plot));
        assert_eq!(&std::fs::read(&again).unwrap()[..4], b"\x89PNG");
        for key in [
            "step",
            "loss",
            "grad_norm",
            "lr",
            "tokens",
            "tokens_per_s",
            "elapsed_s",
            "peak_memory_bytes",
            "skipped",
        ] {
            assert!(!m[3][key].is_null(), "{mode}: metrics lack {key}");
        }
        // The trained result evaluates to the loss the trainer saw at the end.
        let eval_args: Vec<String> = match mode {
            "adapter" => vec![
                "--model".into(),
                model.display().to_string(),
                "--adapter".into(),
                out.join("adapter").display().to_string(),
            ],
            _ => vec!["--model".into(), out.join("model").display().to_string()],
        };
        let mut args: Vec<&str> = vec!["eval", "--data", d.to_str().unwrap(), "--json"];
        args.extend(eval_args.iter().map(String::as_str));
        let e = kiln(&args);
        assert!(e.status.success(), "{}", stderr(&e));
        let report: Value = serde_json::from_slice(&e.stdout).unwrap();
        let loss = report["loss"].as_f64().unwrap();
        assert!(
            loss < first,
            "{mode}: trained loss {loss} vs untrained {first}"
        );
    }
    // Full fine-tuning's folder carries the base's config (and tokenizer files, if any).
    assert!(dir.path().join("model/model/config.json").is_file());
}

/// Starts `kiln train`, waits for the log line of step `after`, sends SIGINT; returns the
/// first step line it printed and its stdout.
fn interrupt_after(args: &[&str], after: usize) -> (String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut first = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.starts_with("step ") && first.is_none() {
            first = Some(line.clone());
        }
        if line.starts_with(&format!("step {after}/")) {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{rest:?}");
    (
        first.unwrap(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn sigint_saves_a_checkpoint_and_resume_latest_continues_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("llama_gqa_tied");
    let d = data(dir.path(), "train.jsonl", 10, 256);
    let out = dir.path().join("run");
    let (model_s, data_s, out_s) = (
        model.to_str().unwrap(),
        d.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let mut args = vec![
        "train", "--model", model_s, "--data", data_s, "--out", out_s,
    ];
    args.extend_from_slice(&["--lora-rank", "4", "--steps", "100000", "--save-every", "0"]);
    args.extend_from_slice(BASE);
    let (first, stdout) = interrupt_after(&args, 3);
    assert!(first.starts_with("step 1/"), "{first}");
    assert!(
        stdout.contains("interrupted at step") && stdout.contains("checkpoint-"),
        "{stdout}"
    );
    let done = metrics(&out).len();
    assert!(done >= 3);
    assert!(out
        .join(format!("checkpoint-{done}/trainer_state.json"))
        .is_file());

    args.extend_from_slice(&["--resume", "latest"]);
    let (first, _) = interrupt_after(&args, done + 2);
    assert!(
        first.starts_with(&format!("step {}/", done + 1)),
        "resumed at {first}"
    );
    let m = metrics(&out);
    let steps: Vec<u64> = m.iter().map(|x| x["step"].as_u64().unwrap()).collect();
    assert_eq!(
        steps,
        (1..=steps.len() as u64).collect::<Vec<_>>(),
        "one line per step"
    );

    // The settings that decide the trajectory must match the checkpoint's.
    let mut other = args.clone();
    let at = other.iter().position(|a| *a == "100000").unwrap();
    other[at] = "7";
    let run = kiln(&other);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        stderr(&run).contains("total-steps 100000"),
        "{}",
        stderr(&run)
    );
}

#[test]
fn bad_settings_and_data_exit_1_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("llama_gqa_tied");
    let d = data(dir.path(), "train.jsonl", 4, 256);
    let out = dir.path().join("out");
    let fails = |data: &Path, extra: &[&str], want: &str| {
        let run = train(&model, data, &out, extra);
        assert_eq!(run.status.code(), Some(1), "{extra:?}: {}", stderr(&run));
        let msg = stderr(&run);
        assert!(msg.contains(want), "{extra:?}: {msg}");
    };
    fails(&d, &["--lora-rank", "0"], "rank must be at least 1");
    fails(
        &d,
        &["--lr", "0"],
        "learning rate must be a positive number",
    );
    fails(&d, &["--lr", "-1e-3"], "learning rate");
    // A value clap itself refuses exits 2 (a usage error), with the reason.
    let run = train(
        &model,
        &d,
        &out,
        &["--lora-rank", "4", "--lora-targets", "q,x"],
    );
    assert_eq!(run.status.code(), Some(2));
    assert!(
        stderr(&run).contains("unknown LoRA target `x`"),
        "{}",
        stderr(&run)
    );
    let missing = dir.path().join("no-such-model");
    let run = kiln(&[
        "train",
        "--model",
        missing.to_str().unwrap(),
        "--data",
        d.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_eq!(run.status.code(), Some(1));
    assert!(stderr(&run).contains("no-such-model"), "{}", stderr(&run));
    let run = kiln(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        d.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--no-such-flag",
    ]);
    assert_ne!(run.status.code(), Some(0));
    assert!(stderr(&run).contains("--no-such-flag"), "{}", stderr(&run));

    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let no_targets = write(
        "single.jsonl",
        "{\"input_ids\": [5]}\n{\"input_ids\": [1, 2], \"labels\": [-100, -100]}\n",
    );
    fails(&no_targets, &[], "no example has a token to predict");
    let outside = write(
        "outside.jsonl",
        "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [1, 999]}\n",
    );
    fails(&outside, &[], "outside.jsonl:2");
    let long: Vec<u32> = (0..40).collect();
    let long = write(
        "long.jsonl",
        &format!(
            "{}\n{{\"input_ids\": [1, 2, 3]}}\n",
            serde_json::json!({ "input_ids": long })
        ),
    );
    fails(&long, &["--no-truncate"], "40 tokens");
    let run = train(&model, &long, &out, &["--steps", "1"]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("(1 longer than --max-seq-len truncated, 24 tokens dropped)"),
        "{}",
        stderr(&run)
    );
    assert!(
        !out.join("checkpoint-1").exists() || out.join("checkpoint-1/trainer_state.json").is_file()
    );
    // The folder holds that run now: refused unless continued or started over.
    fails(&long, &["--steps", "1"], "holds a run already (");
    let run = train(
        &model,
        &long,
        &out,
        &["--steps", "1", "--long-examples", "split", "--overwrite"],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("(1 longer than --max-seq-len split into 2 more)"),
        "{}",
        stderr(&run)
    );

    // More memory than the host has: refused up front, with what it needs and what helps.
    fails(
        &d,
        &[
            "--max-seq-len",
            "100000000",
            "--tokens-per-step",
            "100000000",
            "--overwrite",
        ],
        "--recompute, a smaller --max-seq-len",
    );
    // A GPU asked for where there is none.
    let devices = kiln(&["devices"]);
    if !String::from_utf8_lossy(&devices.stdout).contains("cuda:") {
        fails(
            &d,
            &["--device", "cuda", "--overwrite"],
            "--device cuda: no CUDA device",
        );
    }
    // A data file that cannot be read.
    fails(
        &dir.path().join("absent.jsonl"),
        &["--overwrite"],
        "absent.jsonl: No such file",
    );
    // A missing model folder.
    let run = train(&dir.path().join("nowhere"), &d, &out, &[]);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        stderr(&run).contains("nowhere: no such folder"),
        "{}",
        stderr(&run)
    );

    // A bad line stops the run naming it, or is skipped and counted with --skip-invalid.
    let bad = write(
        "bad.jsonl",
        "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [1, 2\n{\"input_ids\": [4, 5, 6]}\n",
    );
    // --overwrite removes the old run only once the new one is set up: bad data loses nothing.
    fails(&bad, &["--overwrite"], "bad.jsonl:2: not JSON");
    assert!(out.join("metrics.jsonl").is_file());
    let run = train(
        &model,
        &bad,
        &out,
        &["--steps", "1", "--skip-invalid", "--overwrite"],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("skipped 1 invalid: 1 not JSON (first: "),
        "{}",
        stderr(&run)
    );
}

#[test]
fn a_config_file_sets_flags_the_command_line_overrides_and_each_run_writes_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("llama_gqa_tied");
    let d = data(dir.path(), "train.jsonl", 8, 256);
    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        format!(
            "model = {:?}\ndata = {:?}\nlora_rank = 4\nlr = 5e-3\nsteps = 5\n\
             lora-targets = [\"q\", \"v\"]\nmax-seq-len = 16\ntokens-per-step = 40\n\
             precision = \"f32\"\ndevice = \"cpu\"\n",
            model.display().to_string(),
            d.display().to_string()
        ),
    )
    .unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    let run = kiln(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--out",
        first.to_str().unwrap(),
        "--steps",
        "3",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    // The flag won over the file; the effective configuration holds both and the defaults.
    assert_eq!(metrics(&first).len(), 3);
    let effective = std::fs::read_to_string(first.join("kiln-train.toml")).unwrap();
    for line in [
        "steps = 3",
        "lora-rank = 4",
        "lora-targets = [\"q\", \"v\"]",
        "seed = 42",
    ] {
        assert!(effective.contains(line), "{line}: {effective}");
    }
    assert!(effective.contains("(commit "), "{effective}");
    // Repeating it gives the same run.
    let run = kiln(&[
        "train",
        "--config",
        first.join("kiln-train.toml").to_str().unwrap(),
        "--out",
        second.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let losses = |out: &Path| -> Vec<f64> {
        metrics(out)
            .iter()
            .map(|m| m["loss"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(losses(&first), losses(&second));
    // An unknown key is a usage error naming the file and the key.
    std::fs::write(&config, "bogus = 1\n").unwrap();
    let run = kiln(&["train", "--config", config.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(2));
    assert!(
        stderr(&run).contains("run.toml: unknown key `bogus`"),
        "{}",
        stderr(&run)
    );
}

#[test]
fn info_tells_the_parameters_and_the_memory_of_each_mode() {
    let model = fixture("llama_gqa_tied");
    let run = kiln(&[
        "info",
        "--model",
        model.to_str().unwrap(),
        "--max-seq-len",
        "512",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let out = String::from_utf8_lossy(&run.stdout).to_string();
    let config = kiln::models::config::ModelConfig::load(model.join("config.json")).unwrap();
    assert!(
        out.contains(&format!("parameters: {} ", config.parameter_count())),
        "{out}"
    );
    for row in [
        "full         bf16",
        "LoRA         f32",
        "micro-batches of 512 tokens",
        "cpu: ",
    ] {
        assert!(out.contains(row), "{row}: {out}");
    }
}

/// `kiln train` with `extra` flags and launcher environment `env`.
fn train_with_env(extra: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("llama_gqa_tied");
    let d = data(dir.path(), "train.jsonl", 4, 256);
    let out = dir.path().join("out");
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command
        .args(["train", "--model", model.to_str().unwrap()])
        .args([
            "--data",
            d.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(extra)
        .env("KILN_CACHE_DIR", dir.path().join("cache"));
    for var in [
        "WORLD_SIZE",
        "RANK",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "SLURM_NTASKS",
        "SLURM_PROCID",
        "SLURM_LOCALID",
    ] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    let run = command.output().unwrap();
    assert!(!out.exists(), "a refused run wrote {}", out.display());
    run
}

/// Flags, launcher environment, and what the error must say.
type BadLaunch<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_data_parallel_launches_exit_1_with_the_reason() {
    let cases: &[BadLaunch] = &[
        (
            &["--gpus", "0"],
            &[],
            "--gpus 0: a run needs at least one GPU",
        ),
        (
            &["--gpus", "2", "--device", "cpu"],
            &[],
            "runs on CUDA GPUs",
        ),
        (
            &["--gpus", "1", "--device", "cpu"],
            &[],
            "runs on CUDA GPUs",
        ),
        // More GPUs than any machine has (or no driver at all): refused, naming the flag.
        (&["--gpus", "64"], &[], "--gpus 64: "),
        (
            &[],
            &[("WORLD_SIZE", "2")],
            "WORLD_SIZE=2 is set but RANK is not",
        ),
        (
            &[],
            &[("WORLD_SIZE", "2"), ("RANK", "2"), ("LOCAL_RANK", "0")],
            "RANK=2 is not below WORLD_SIZE=2",
        ),
        (
            &["--device", "cpu"],
            &[
                ("SLURM_NTASKS", "2"),
                ("SLURM_PROCID", "1"),
                ("SLURM_LOCALID", "1"),
            ],
            "MASTER_ADDR and MASTER_PORT must both be set",
        ),
        (
            &["--gpus", "3"],
            &[
                ("WORLD_SIZE", "2"),
                ("RANK", "1"),
                ("LOCAL_RANK", "1"),
                ("MASTER_ADDR", "127.0.0.1"),
                ("MASTER_PORT", "29400"),
            ],
            "--gpus 3 in a process of a run of WORLD_SIZE=2",
        ),
        (
            &["--device", "cpu"],
            &[
                ("WORLD_SIZE", "2"),
                ("RANK", "1"),
                ("LOCAL_RANK", "1"),
                ("MASTER_ADDR", "127.0.0.1"),
                ("MASTER_PORT", "29400"),
            ],
            "runs on CUDA GPUs",
        ),
        // Rank 1 of a run whose rank 0 is nowhere gives up after KILN_DIST_TIMEOUT_S.
        (
            &[],
            &[
                ("WORLD_SIZE", "2"),
                ("RANK", "1"),
                ("LOCAL_RANK", "1"),
                ("MASTER_ADDR", "no-such-host.invalid"),
                ("MASTER_PORT", "29400"),
                ("KILN_DIST_TIMEOUT_S", "1"),
            ],
            "rank 1 of 2: rendezvous: MASTER_ADDR no-such-host.invalid does not resolve",
        ),
        (
            &[],
            &[
                ("WORLD_SIZE", "2"),
                ("RANK", "1"),
                ("LOCAL_RANK", "1"),
                ("MASTER_ADDR", "127.0.0.1"),
                ("MASTER_PORT", "1"),
                ("KILN_DIST_TIMEOUT_S", "1"),
            ],
            "could not reach rank 0 at 127.0.0.1:1",
        ),
        (
            &[],
            &[
                ("WORLD_SIZE", "2"),
                ("RANK", "1"),
                ("LOCAL_RANK", "1"),
                ("MASTER_ADDR", "127.0.0.1"),
                ("MASTER_PORT", "1"),
                ("KILN_DIST_TIMEOUT_S", "soon"),
            ],
            "KILN_DIST_TIMEOUT_S=soon",
        ),
    ];
    for (flags, env, want) in cases {
        let started = std::time::Instant::now();
        let run = train_with_env(flags, env);
        let e = stderr(&run);
        assert_eq!(run.status.code(), Some(1), "{flags:?} {env:?}: {e}");
        assert!(e.contains(want), "{flags:?} {env:?}: {e}");
        assert!(started.elapsed().as_secs() < 30, "{flags:?} {env:?}");
    }
    // One GPU asked for and none there: no silent fallback to the CPU.
    if kiln::runtime::Device::cuda(0).is_err() {
        let run = train_with_env(&["--gpus", "1"], &[]);
        assert_eq!(run.status.code(), Some(1), "{}", stderr(&run));
        assert!(stderr(&run).contains("--device cuda"), "{}", stderr(&run));
    }
    // --zero takes 0 or 1 (a usage error otherwise).
    let run = train_with_env(&["--zero", "2"], &[]);
    assert_eq!(run.status.code(), Some(2), "{}", stderr(&run));
    assert!(stderr(&run).contains("unknown ZeRO stage `2`"));
}

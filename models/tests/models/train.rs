//! The trainer against PyTorch and against itself: 3 AdamW steps of full fine-tuning and of
//! LoRA+ (ratio 16, from an adapter PEFT initialised and saved) reproduce `torch.optim.AdamW`'s
//! per-step losses and gradient norms (`tests/fixtures/hf/make_train.py`); one micro-batch and
//! several give the same gradients; a resumed run is bit-identical to a straight one; a
//! non-finite step is skipped, and five in a row stop training with a checkpoint.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use kiln_models::adapters::{Lora, LoraSpec, Target};
use kiln_models::batch::Sequence;
use kiln_models::checkpoint;
use kiln_models::data::TokenStore;
use kiln_models::data_plan::{Examples, LongExamples};
use kiln_models::metrics::MetricsLog;
use kiln_models::model::Model;
use kiln_models::optim::{OptimizerConfig, Schedule, ScheduleKind};
use kiln_models::precision::Precision;
use kiln_models::rng::SplitMix64;
use kiln_models::trainer::{Length, LoraOptions, RunEnd, TrainOptions, Trainer};
use kiln_models::weights::{self, SaveDtype};
use kiln_models::{Error, HostTensor, SafeTensors};
use kiln_ops::Ops;
use serde_json::Value;

use crate::hf::{cpu_ops, fixture_dir};

const TRAINED: [&str; 2] = ["llama_gqa_tied", "qwen2_gqa_bias_untied"];

fn reference(model: &str) -> Value {
    let path = fixture_dir(model).join("train_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn sequences(r: &Value) -> Vec<Sequence> {
    r["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            Sequence::new(
                s.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect(),
            )
        })
        .collect()
}

/// The fixtures' AdamW: lr 1e-3 constant, betas (0.9, 0.999), eps 1e-8, decay 0.01, clip 1.
fn torch_adamw() -> OptimizerConfig {
    OptimizerConfig {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        max_grad_norm: Some(1.0),
        schedule: Schedule {
            kind: ScheduleKind::Constant,
            warmup: 0,
            total: 0,
            floor: 0.0,
        },
    }
}

pub fn options(
    lora: Option<LoraOptions>,
    steps: usize,
    tokens_per_step: usize,
    max_seq_len: usize,
) -> TrainOptions {
    TrainOptions {
        lora,
        optimizer: torch_adamw(),
        max_seq_len,
        tokens_per_step,
        length: Length::Steps(steps),
        warmup_steps: Some(0),
        seed: 7,
        recompute: false,
        eval_every: 0,
        save_every: 0,
        keep: 0,
    }
}

fn lora_plus_from(adapter: PathBuf, dropout: f32) -> LoraOptions {
    LoraOptions {
        spec: LoraSpec {
            rank: 4,
            alpha: 8.0,
            rslora: false,
            dropout,
            targets: Target::ALL.to_vec(),
        },
        plus_ratio: 16.0,
        adapter: Some(adapter),
    }
}

fn trainer(
    model: &str,
    precision: Precision,
    options: TrainOptions,
    data: Vec<Sequence>,
) -> Trainer {
    trainer_on(&cpu_ops(), model, precision, options, data)
}

pub fn trainer_on(
    ops: &Arc<Ops>,
    model: &str,
    precision: Precision,
    options: TrainOptions,
    data: Vec<Sequence>,
) -> Trainer {
    let dir = fixture_dir(model);
    let m = Model::load(&dir, ops.clone(), precision).unwrap();
    let eval = Some(data.clone());
    Trainer::new(
        m,
        &dir,
        options,
        Examples::from_sequences(&data).unwrap(),
        eval,
    )
    .unwrap()
}

pub fn rel(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-30)
}

/// Runs the fixture's 3 steps and checks losses, gradient norms, the loss after the last
/// update and the sampled final weights.
fn check_against_torch(ops: &Arc<Ops>, model: &str, mode: &str, lora: Option<LoraOptions>) {
    let r = reference(model);
    let want = &r[mode];
    let mode = &format!("{mode} ({})", ops.device().name());
    let mut t = trainer_on(
        ops,
        model,
        Precision::F32,
        options(lora, 3, 1024, 64),
        sequences(&r),
    );
    assert!(
        t.updates_in_one_launch(),
        "{model} {mode}: the gradients and tensors are laid out for one AdamW launch"
    );
    for (i, step) in want["steps"].as_array().unwrap().iter().enumerate() {
        let m = t.step().unwrap();
        assert!(!m.skipped);
        assert_eq!(m.tokens, r["tokens"].as_u64().unwrap() as usize);
        let (loss, norm) = (
            step["loss"].as_f64().unwrap(),
            step["grad_norm"].as_f64().unwrap(),
        );
        assert!(
            rel(m.loss, loss) < 1e-4,
            "{model} {mode} step {}: loss {} vs torch {loss}",
            i + 1,
            m.loss
        );
        assert!(
            rel(m.grad_norm, norm) < 1e-4,
            "{model} {mode} step {}: grad norm {} vs torch {norm}",
            i + 1,
            m.grad_norm
        );
    }
    let final_loss = t.evaluate().unwrap().unwrap();
    let want_final = want["final_loss"].as_f64().unwrap();
    assert!(
        rel(final_loss, want_final) < 1e-4,
        "{model} {mode}: final loss {final_loss} vs {want_final}"
    );
    let trained = t.trained_tensors().unwrap();
    for sample in want["final_samples"].as_array().unwrap() {
        let name = sample["name"].as_str().unwrap();
        let (_, tensor) = trained
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name}"));
        for (idx, v) in sample["index"]
            .as_array()
            .unwrap()
            .iter()
            .zip(sample["values"].as_array().unwrap())
        {
            let (got, want) = (
                tensor.data[idx.as_u64().unwrap() as usize] as f64,
                v.as_f64().unwrap(),
            );
            assert!(
                (got - want).abs() < 3e-6,
                "{model} {mode} {name}[{idx}]: {got} vs torch {want}"
            );
        }
    }
}

#[test]
fn full_fine_tuning_reproduces_torch_adamw() {
    for ops in crate::devices("full_fine_tuning_reproduces_torch_adamw") {
        for model in TRAINED {
            check_against_torch(&ops, model, "full", None);
        }
    }
}

#[test]
fn lora_plus_from_a_peft_adapter_reproduces_torch_adamw() {
    for ops in crate::devices("lora_plus_from_a_peft_adapter_reproduces_torch_adamw") {
        for model in TRAINED {
            let adapter = fixture_dir(model).join("train_adapter");
            check_against_torch(&ops, model, "lora_plus", Some(lora_plus_from(adapter, 0.0)));
        }
    }
}

/// Gradients of the first step by name.
fn first_gradients(
    ops: &Arc<Ops>,
    model: &str,
    lora: Option<LoraOptions>,
    max_seq_len: usize,
) -> (usize, Vec<(String, Vec<f32>)>) {
    let r = reference(model);
    let mut t = trainer_on(
        ops,
        model,
        Precision::F32,
        options(lora, 1, 1024, max_seq_len),
        sequences(&r),
    );
    let m = t.step().unwrap();
    (m.micro_batches, t.gradients().unwrap())
}

#[test]
fn one_micro_batch_and_three_give_the_same_gradients() {
    for (ops, model) in crate::devices("one_micro_batch_and_three")
        .into_iter()
        .flat_map(|ops| TRAINED.map(|m| (ops.clone(), m)))
    {
        let adapter = fixture_dir(model).join("train_adapter");
        let device = ops.device().name();
        for lora in [None, Some(lora_plus_from(adapter, 0.0))] {
            let (one, a) = first_gradients(&ops, model, lora.clone(), 64);
            let (three, b) = first_gradients(&ops, model, lora.clone(), 9);
            assert_eq!((one, three), (1, 3));
            for ((name, x), (_, y)) in a.iter().zip(&b) {
                let norm = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
                let diff = x
                    .iter()
                    .zip(y)
                    .map(|(p, q)| ((p - q) as f64).powi(2))
                    .sum::<f64>()
                    .sqrt();
                // A B that starts at zero has a zero gradient for A: nothing to compare.
                if norm > 0.0 {
                    assert!(
                        diff / norm < 1e-5,
                        "{model} ({device}) {name}: |Δg|/|g| = {}",
                        diff / norm
                    );
                }
            }
        }
    }
}

/// Random sequences of 3..=12 tokens below `vocab`.
pub fn random_data(n: usize, vocab: u64, seed: u64) -> Vec<Sequence> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let len = 3 + rng.below(10) as usize;
            Sequence::new((0..len).map(|_| rng.below(vocab) as u32).collect())
        })
        .collect()
}

fn run_to_end(t: &mut Trainer, out: &Path) -> RunEnd {
    t.run(out, &AtomicBool::new(false), |_| {}).unwrap()
}

fn losses(out: &Path) -> Vec<u64> {
    MetricsLog::read(&out.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|m| m.loss.to_bits())
        .collect()
}

#[test]
fn a_resumed_run_is_bit_identical_to_a_straight_one() {
    let model = "llama_gqa_tied";
    let adapter = fixture_dir(model).join("train_adapter");
    // LoRA+ with dropout in bf16 (masters and copies, dropout masks), and full fine-tuning in f32.
    let cases = [
        (Some(lora_plus_from(adapter, 0.1)), Precision::Bf16),
        (None, Precision::F32),
    ];
    for (ops, (lora, precision)) in crate::devices("a_resumed_run_is_bit_identical")
        .into_iter()
        .flat_map(|ops| cases.clone().map(|case| (ops.clone(), case)))
    {
        let label = format!("{precision} on {}", ops.device().name());
        let data = random_data(14, 256, 3);
        let mut opts = options(lora, 6, 24, 16);
        opts.optimizer.schedule = Schedule {
            kind: ScheduleKind::Cosine,
            warmup: 0,
            total: 0,
            floor: 0.1,
        };
        opts.warmup_steps = Some(2);
        opts.save_every = 3;
        opts.keep = 1;
        let straight = tempfile::tempdir().unwrap();
        let mut a = trainer_on(&ops, model, precision, opts.clone(), data.clone());
        run_to_end(&mut a, straight.path());
        // keep 1: only the newest checkpoint is left.
        let kept: Vec<usize> = checkpoint::list(straight.path())
            .unwrap()
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(kept, [6]);

        let resumed = tempfile::tempdir().unwrap();
        let mut first = opts.clone();
        first.length = Length::Steps(6);
        let mut b = trainer_on(&ops, model, precision, first, data.clone());
        // Three steps, a checkpoint, then a new process's trainer resumes from it.
        for _ in 0..3 {
            b.step().unwrap();
        }
        let dir = b.save_checkpoint(resumed.path()).unwrap();
        // Metrics of the first half, as the interrupted run left them.
        drop(b);
        let mut c = trainer_on(&ops, model, precision, opts.clone(), data.clone());
        c.resume(&checkpoint::resolve(Path::new("latest"), resumed.path()).unwrap())
            .unwrap();
        assert_eq!(c.state.step, 3);
        assert_eq!(checkpoint::resolve(&dir, resumed.path()).unwrap(), dir);
        run_to_end(&mut c, resumed.path());

        let a_losses = losses(straight.path());
        let c_losses = losses(resumed.path());
        assert_eq!(a_losses.len(), 6);
        let (x, y) = (a.trained_tensors().unwrap(), c.trained_tensors().unwrap());
        if ops.device().kind() == kiln_runtime::DeviceKind::Cpu {
            assert_eq!(
                a_losses[3..],
                c_losses[..],
                "{label}: steps 4-6 differ after the resume"
            );
            for ((name, p), (_, q)) in x.iter().zip(&y) {
                assert!(
                    p.data
                        .iter()
                        .zip(&q.data)
                        .all(|(u, v)| u.to_bits() == v.to_bits()),
                    "{label}: `{name}` differs after the resume"
                );
            }
        } else {
            // On a GPU the loss totals and the embedding's gradient add with float atomics
            // (docs/TRAINING.md): the resumed run follows the straight one to rounding.
            for (&u, &v) in a_losses[3..].iter().zip(&c_losses) {
                let (u, v) = (f64::from_bits(u), f64::from_bits(v));
                assert!(
                    rel(v, u) < 1e-5,
                    "{label}: loss {v} after the resume, {u} straight"
                );
            }
            for ((name, p), (_, q)) in x.iter().zip(&y) {
                let worst = p
                    .data
                    .iter()
                    .zip(&q.data)
                    .map(|(u, v)| (u - v).abs() as f64 / (u.abs() as f64).max(1e-3))
                    .fold(0.0, f64::max);
                assert!(
                    worst < 1e-4,
                    "{label}: `{name}` differs after the resume by {worst}"
                );
            }
        }
        // A resume with other settings is refused, naming the setting.
        let mut other = opts.clone();
        other.seed = 8;
        let mut d = trainer_on(&ops, model, precision, other, data.clone());
        let latest = checkpoint::resolve(Path::new("latest"), resumed.path()).unwrap();
        assert_ne!(latest, dir, "keep 1 pruned the older checkpoint");
        let e = d.resume(&latest).unwrap_err().to_string();
        assert!(e.contains("seed 7") && e.contains("8"), "{e}");
    }
}

#[test]
fn the_loss_falls_in_a_short_lora_run_and_the_adapter_loads_back() {
    let model = "qwen2_gqa_bias_untied";
    let data = random_data(6, 320, 11);
    let lora = LoraOptions {
        spec: LoraSpec {
            rank: 8,
            alpha: 16.0,
            rslora: true,
            dropout: 0.0,
            targets: vec![Target::Q, Target::V, Target::Down],
        },
        plus_ratio: 16.0,
        adapter: None,
    };
    let mut opts = options(Some(lora), 20, 64, 32);
    opts.optimizer.lr = 5e-3;
    opts.eval_every = 10;
    for ops in crate::devices("the_loss_falls_in_a_short_lora_run") {
        let out = tempfile::tempdir().unwrap();
        let mut t = trainer_on(&ops, model, Precision::F32, opts.clone(), data.clone());
        let end = run_to_end(&mut t, out.path());
        let metrics = MetricsLog::read(&out.path().join("metrics.jsonl")).unwrap();
        assert_eq!(metrics.len(), 20);
        let (first, last) = (metrics[0].loss, metrics[19].loss);
        assert!(last < 0.7 * first, "loss {first} -> {last}");
        assert!(metrics
            .iter()
            .all(|m| m.grad_norm.is_finite() && m.grad_norm > 0.0));
        assert!(metrics[9].eval_loss.is_some() && metrics[19].eval_loss.is_some());
        assert!(metrics[0].eval_loss.is_none());
        let RunEnd::Finished { output } = end else {
            panic!("{end:?}")
        };
        assert_eq!(output, out.path().join("adapter"));
        // The PEFT folder reads back as the same adapters, and merged into the base it gives the
        // trained model's loss.
        let config = t.model.config.clone();
        let back = Lora::load_peft(&config, &output, None).unwrap();
        assert_eq!(back.spec.targets, [Target::Q, Target::V, Target::Down]);
        assert!(back.spec.rslora);
        let trained = t.trained_tensors().unwrap();
        for ((n, a), (m, b)) in back.named().iter().zip(&trained) {
            assert_eq!(n, m);
            assert_eq!(a.data, b.data);
        }
        let mut merged = Model::load(fixture_dir(model), ops.clone(), Precision::F32).unwrap();
        merged.merge_adapter(&output).unwrap();
        let (merged_eval, _) = kiln_models::eval::evaluate(&merged, &data, 64).unwrap();
        let adapter_eval = t.evaluate().unwrap().unwrap();
        assert!(
            rel(merged_eval.loss, adapter_eval) < 1e-5,
            "{} vs {adapter_eval}",
            merged_eval.loss
        );
    }
}

#[test]
fn non_finite_steps_are_skipped_and_five_in_a_row_stop_with_a_checkpoint() {
    let model = "llama_gqa_tied";
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("nan_adapter");
    std::fs::create_dir(&adapter).unwrap();
    let src = fixture_dir(model).join("train_adapter");
    std::fs::copy(
        src.join("adapter_config.json"),
        adapter.join("adapter_config.json"),
    )
    .unwrap();
    let file = SafeTensors::open(src.join("adapter_model.safetensors")).unwrap();
    let mut tensors: Vec<(String, HostTensor)> = file
        .names()
        .map(|n| (n.to_string(), file.get(n).unwrap()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    // One NaN in one B: every forward is NaN from the first layer on.
    let b = tensors
        .iter_mut()
        .find(|(n, _)| n.contains("layers.0.self_attn.q_proj.lora_B"))
        .unwrap();
    b.1.data[3] = f32::NAN;
    let refs: Vec<(&str, &HostTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    weights::save(
        adapter.join("adapter_model.safetensors"),
        &refs,
        SaveDtype::F32,
        &Default::default(),
    )
    .unwrap();

    let out = dir.path().join("run");
    let mut t = trainer(
        model,
        Precision::F32,
        options(Some(lora_plus_from(adapter, 0.0)), 20, 64, 32),
        random_data(8, 256, 5),
    );
    let before = t.trained_tensors().unwrap();
    let err = t.run(&out, &AtomicBool::new(false), |_| {}).unwrap_err();
    assert!(matches!(err, Error::Training(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("steps 1..=5") && msg.contains("checkpoint-5"),
        "{msg}"
    );
    let metrics = MetricsLog::read(&out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.len(), 5);
    assert!(metrics.iter().all(|m| m.skipped));
    // Nothing was applied: the checkpoint holds the adapter as it started.
    let saved = SafeTensors::open(out.join("checkpoint-5/adapter_model.safetensors")).unwrap();
    for (name, t0) in &before {
        let now = saved.get(name).unwrap();
        assert!(
            now.data
                .iter()
                .zip(&t0.data)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}"
        );
    }
    let state = checkpoint::load_state(&out.join("checkpoint-5")).unwrap();
    assert_eq!(
        (state.step, state.updates, state.consecutive_skips),
        (5, 0, 5)
    );
}

#[test]
fn an_interrupted_checkpoint_write_leaves_the_previous_one_loadable() {
    let model = "llama_gqa_tied";
    let out = tempfile::tempdir().unwrap();
    let mut t = trainer(
        model,
        Precision::F32,
        options(None, 4, 24, 16),
        random_data(6, 256, 9),
    );
    t.step().unwrap();
    let first = t.save_checkpoint(out.path()).unwrap();
    t.step().unwrap();
    // A crash mid-write: the fill fails after writing part of the folder.
    let second = checkpoint::dir_of(out.path(), 2);
    let failed = kiln_models::atomic::write_dir(
        &second,
        |_| Ok(true),
        |tmp| {
            std::fs::write(tmp.join(checkpoint::STATE_FILE), "{").unwrap();
            Err(Error::Invalid("disk full".into()))
        },
    );
    assert!(failed.is_err());
    assert!(!second.exists());
    // A temporary folder left by a killed process is not a checkpoint either.
    let stale = out.path().join(".checkpoint-2.tmp-99999");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join(checkpoint::STATE_FILE), "{").unwrap();
    let latest = checkpoint::resolve(Path::new("latest"), out.path()).unwrap();
    assert_eq!(latest, first);
    let mut u = trainer(
        model,
        Precision::F32,
        options(None, 4, 24, 16),
        random_data(6, 256, 9),
    );
    u.resume(&latest).unwrap();
    assert_eq!(u.state.step, 1);
    // The next write of the same step replaces a complete one in one rename.
    let again = t.save_checkpoint(out.path()).unwrap();
    assert_eq!(checkpoint::load_state(&again).unwrap().step, 2);
}

#[test]
fn bad_settings_and_data_are_refused_with_the_reason() {
    let model = "llama_gqa_tied";
    let data = random_data(4, 256, 1);
    let dir = fixture_dir(model);
    let new = |opts: TrainOptions| {
        let m = Model::load(&dir, cpu_ops(), Precision::F32).unwrap();
        Trainer::new(
            m,
            &dir,
            opts,
            Examples::from_sequences(&data).unwrap(),
            None,
        )
        .map(|_| ())
        .unwrap_err()
        .to_string()
    };
    let mut rank0 = lora_plus_from(PathBuf::new(), 0.0);
    rank0.adapter = None;
    rank0.spec.rank = 0;
    assert!(new(options(Some(rank0), 1, 64, 32)).contains("rank must be at least 1"));
    let mut lr0 = options(None, 1, 64, 32);
    lr0.optimizer.lr = 0.0;
    assert!(new(lr0).contains("learning rate must be a positive number"));
    let mut lr_neg = options(None, 1, 64, 32);
    lr_neg.optimizer.lr = -1e-3;
    assert!(new(lr_neg).contains("learning rate"));
    let e = new(options(None, 0, 64, 32));
    assert!(e.contains("at least one step"), "{e}");
    let mut bad_adapter = lora_plus_from(
        fixture_dir("qwen2_gqa_bias_untied").join("train_adapter"),
        0.0,
    );
    bad_adapter.plus_ratio = 16.0;
    let e = new(options(Some(bad_adapter), 1, 64, 32));
    assert!(e.contains("adapter_model.safetensors"), "{e}");

    // Data: nothing to predict is an error, never a run that learns nothing.
    let store = |seqs: Vec<Sequence>| Arc::new(TokenStore::from_sequences(&seqs).unwrap());
    let single = store(vec![Sequence::new(vec![5]), Sequence::new(vec![7])]);
    let e = Examples::prepare(single, 32, LongExamples::Truncate, "d.jsonl")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("d.jsonl") && e.contains("no example has a token to predict"),
        "{e}"
    );
    let long = || store(vec![Sequence::new((0..40).collect())]);
    let (_, prepared) = Examples::prepare(long(), 32, LongExamples::Truncate, "d.jsonl").unwrap();
    assert_eq!((prepared.long, prepared.tokens_dropped), (1, 8));
    assert!(
        Examples::prepare(long(), 32, LongExamples::Refuse, "d.jsonl")
            .unwrap_err()
            .to_string()
            .contains("40 tokens")
    );
}

/// Queued steps: the host never waits for the device inside [`Trainer::submit`] (on the GPU,
/// every blocking wait is counted by the device), and steps queued back to back, collected
/// later, give the losses and norms of steps run one at a time.
#[test]
fn submitted_steps_do_not_wait_for_the_device_and_match_steps_run_one_at_a_time() {
    let adapter = fixture_dir("llama_gqa_tied").join("train_adapter");
    for ops in crate::devices("submitted_steps_do_not_wait_for_the_device") {
        let run = || {
            trainer_on(
                &ops,
                "llama_gqa_tied",
                Precision::F32,
                options(Some(lora_plus_from(adapter.clone(), 0.0)), 4, 64, 32),
                random_data(24, 256, 9),
            )
        };
        let mut one_at_a_time = run();
        let want: Vec<_> = (0..4).map(|_| one_at_a_time.step().unwrap()).collect();

        let mut queued = run();
        // The first step compiles the kernels and sizes the buffers: count from the second.
        let first = queued.submit().unwrap();
        let before = ops.device().host_waits();
        let pending: Vec<_> = (0..3).map(|_| queued.submit().unwrap()).collect();
        let waits = ops.device().host_waits() - before;
        assert_eq!(
            waits,
            0,
            "{}: the host waited inside submit",
            ops.device().name()
        );
        let got: Vec<_> = std::iter::once(first)
            .chain(pending)
            .map(|p| queued.collect(p).unwrap())
            .collect();
        // The gradients and the update are deterministic where the GEMMs are (not while they
        // are tuned by measurement: a class of shapes switches algorithms once timed, at a
        // point that differs between the two runs); the loss total is summed with atomics on
        // the GPU, so it may differ in its last bits.
        let exact = ops.device().gemm_reproducible();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((g.step, g.tokens, g.skipped), (w.step, w.tokens, w.skipped));
            if exact {
                assert_eq!(
                    g.grad_norm.to_bits(),
                    w.grad_norm.to_bits(),
                    "step {}",
                    g.step
                );
            } else {
                let r = rel(g.grad_norm, w.grad_norm);
                assert!(r < 1e-5, "step {}: grad norm rel {r:.1e}", g.step);
            }
            assert!(
                rel(g.loss, w.loss) < 1e-6,
                "step {}: {} vs {}",
                g.step,
                g.loss,
                w.loss
            );
        }
    }
}

//! The model against Hugging Face transformers: the committed fixtures of
//! `tests/fixtures/hf/make.py` (tiny random Qwen2 and Llama models with GQA, tied and untied
//! embeddings, q/k/v(/o) biases) hold float64 per-token losses, logits rows, gradient norms and
//! gradient samples. Kiln in f32 must match per-token losses to 1e-4 absolute and gradient
//! norms to 1e-4 relative; in bf16 the mean loss to 3e-3 relative, per-token losses to 0.25
//! absolute and gradient norms to 2e-2 relative.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use kiln_models::batch::{Batch, Sequence};
use kiln_models::model::{Model, Pass};
use kiln_models::precision::download;
use kiln_models::precision::Precision;
use kiln_ops::Ops;
use kiln_runtime::Device;
use serde_json::Value;

pub const FIXTURES: [&str; 3] = [
    "qwen2_gqa_bias_untied",
    "llama_gqa_tied",
    "llama_mha_untied_bias",
];

pub fn fixture_dir(name: &str) -> PathBuf {
    crate::repo_root().join("tests/fixtures/hf").join(name)
}

/// One `Ops` on the CPU for every test (kernels compile once).
pub fn cpu_ops() -> Arc<Ops> {
    static OPS: OnceLock<Arc<Ops>> = OnceLock::new();
    OPS.get_or_init(|| Arc::new(Ops::new(Device::cpu())))
        .clone()
}

pub struct Reference {
    pub sequences: Vec<Sequence>,
    /// Per sequence, per position: the float64 loss, or None where ignored.
    pub losses: Vec<Vec<Option<f64>>>,
    pub loss: f64,
    pub tokens: usize,
    pub logits: Vec<(usize, usize, Vec<f64>)>,
    pub grad_norm: f64,
    pub grad_norms: Vec<(String, f64)>,
    pub grad_samples: Vec<(String, Vec<(usize, f64)>)>,
    pub greedy_prompt: Vec<u32>,
    pub greedy_new: Vec<u32>,
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn reference(name: &str) -> Reference {
    let path = fixture_dir(name).join("reference.json");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let seqs = r["sequences"].as_array().unwrap();
    let sequences = seqs
        .iter()
        .map(|s| Sequence {
            input_ids: u32s(&s["input_ids"]),
            labels: s["labels"]
                .as_array()
                .map(|l| l.iter().map(|x| x.as_i64().unwrap() as i32).collect()),
        })
        .collect();
    let losses = seqs
        .iter()
        .map(|s| {
            s["losses"]
                .as_array()
                .unwrap()
                .iter()
                .map(Value::as_f64)
                .collect()
        })
        .collect();
    let logits = r["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["sequence"].as_u64().unwrap() as usize,
                l["position"].as_u64().unwrap() as usize,
                f64s(&l["values"]),
            )
        })
        .collect();
    let grad_norms = r["grad_norms"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
        .collect();
    let grad_samples = r["grad_samples"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let samples = v
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_u64().unwrap() as usize, p[1].as_f64().unwrap()))
                .collect();
            (k.clone(), samples)
        })
        .collect();
    Reference {
        sequences,
        losses,
        loss: r["loss"].as_f64().unwrap(),
        tokens: r["tokens"].as_u64().unwrap() as usize,
        logits,
        grad_norm: r["grad_norm"].as_f64().unwrap(),
        grad_norms,
        grad_samples,
        greedy_prompt: u32s(&r["greedy"]["prompt"]),
        greedy_new: u32s(&r["greedy"]["new_tokens"]),
    }
}

pub fn load(name: &str, precision: Precision) -> Model {
    load_on(&cpu_ops(), name, precision)
}

/// Fixture `name` on the device of `ops`.
pub fn load_on(ops: &Arc<Ops>, name: &str, precision: Precision) -> Model {
    Model::load(fixture_dir(name), ops.clone(), precision)
        .unwrap_or_else(|e| panic!("loading {name} on {}: {e}", ops.device().name()))
}

/// Every sequence of the reference packed into one batch.
pub fn packed(model: &Model, reference: &Reference) -> Batch {
    let all: Vec<&Sequence> = reference.sequences.iter().collect();
    Batch::pack(&all, model.config.vocab).unwrap()
}

/// What one forward and backward of the packed reference batch gives.
pub struct Run {
    pub loss: f64,
    pub predicted: usize,
    /// Per sequence, per position (n - 1 of them).
    pub losses: Vec<Vec<f64>>,
    /// Per parameter (Hugging Face name), its gradient on the host.
    pub grads: Vec<(String, Vec<f32>)>,
}

pub fn run(model: &Model, batch: &Batch, pass: Pass) -> Run {
    let device_batch = batch.upload(model.ops()).unwrap();
    let forward = model.forward(&device_batch, pass).unwrap();
    let (loss, predicted) = (forward.loss as f64, forward.predicted);
    let token_losses = forward.token_losses().unwrap();
    let losses = batch
        .cu_seqlens
        .windows(2)
        .map(|w| (w[0]..w[1] - 1).map(|t| token_losses[t] as f64).collect())
        .collect();
    let mut grads = model.zero_gradients().unwrap();
    model
        .backward(&device_batch, forward, 1.0, &mut grads)
        .unwrap();
    let grads = grads
        .named()
        .into_iter()
        .map(|(name, b)| (name, download(b).unwrap()))
        .collect();
    Run {
        loss,
        predicted,
        losses,
        grads,
    }
}

pub fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt()
}

fn check(ops: &Arc<Ops>, name: &str, precision: Precision) {
    let r = reference(name);
    let model = load_on(ops, name, precision);
    let device = ops.device().name();
    let name = &format!("{name} ({device})");
    let batch = packed(&model, &r);
    let got = run(&model, &batch, Pass::Train);
    let (token_tol, norm_rel) = match precision {
        Precision::F32 => (1e-4, 1e-4),
        Precision::Bf16 => (0.25, 2e-2),
    };
    let mean_rel = match precision {
        Precision::F32 => 1e-5,
        Precision::Bf16 => 3e-3,
    };
    assert_eq!(got.predicted, r.tokens, "{name}: predicted tokens");
    let rel = (got.loss - r.loss).abs() / r.loss;
    assert!(
        rel <= mean_rel,
        "{name} {precision}: loss {} vs {} (rel {rel:.2e})",
        got.loss,
        r.loss
    );
    let mut worst = 0.0f64;
    for (s, (want, have)) in r.losses.iter().zip(&got.losses).enumerate() {
        assert_eq!(want.len(), have.len(), "{name}: sequence {s} length");
        for (t, (w, h)) in want.iter().zip(have).enumerate() {
            match w {
                Some(w) => {
                    let err = (w - h).abs();
                    worst = worst.max(err);
                    assert!(
                        err <= token_tol,
                        "{name} {precision}: sequence {s} position {t}: loss {h} vs {w}"
                    );
                }
                None => assert_eq!(*h, 0.0, "{name}: an ignored position has a loss"),
            }
        }
    }
    eprintln!(
        "{name} {precision}: loss {:.6} (ref {:.6}), worst per-token error {worst:.2e}",
        got.loss, r.loss
    );

    let total = got
        .grads
        .iter()
        .map(|(_, g)| norm(g).powi(2))
        .sum::<f64>()
        .sqrt();
    let rel = (total - r.grad_norm).abs() / r.grad_norm;
    assert!(
        rel <= norm_rel,
        "{name} {precision}: grad norm {total} vs {} (rel {rel:.2e})",
        r.grad_norm
    );
    let names: Vec<&String> = got.grads.iter().map(|(n, _)| n).collect();
    // The parameter structure lists the tensors in the config's (checkpoint) order.
    let expected: Vec<String> = model
        .config
        .parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        expected.iter().collect::<Vec<_>>(),
        "{name}: parameter order"
    );
    assert_eq!(
        names.len(),
        r.grad_norms.len(),
        "{name}: parameters {names:?}"
    );
    for (param, want) in &r.grad_norms {
        let g = &got
            .grads
            .iter()
            .find(|(n, _)| n == param)
            .unwrap_or_else(|| panic!("{name}: no gradient for {param}"))
            .1;
        let have = norm(g);
        let rel = (have - want).abs() / want.max(1e-12);
        assert!(
            rel <= norm_rel,
            "{name} {precision}: |grad {param}| {have} vs {want} (rel {rel:.2e})"
        );
    }
    if precision == Precision::F32 {
        for (param, samples) in &r.grad_samples {
            let g = &got.grads.iter().find(|(n, _)| n == param).unwrap().1;
            let scale = r.grad_norms.iter().find(|(n, _)| n == param).unwrap().1;
            for &(i, want) in samples {
                let err = (g[i] as f64 - want).abs();
                assert!(
                    err <= 1e-4 * scale.max(1e-3) + 1e-7,
                    "{name}: grad {param}[{i}] {} vs {want}",
                    g[i]
                );
            }
        }
        // Logits rows, from the same forward as the loss.
        let device_batch = batch.upload(model.ops()).unwrap();
        let rows: Vec<usize> = r
            .logits
            .iter()
            .map(|(s, p, _)| batch.cu_seqlens[*s] + p)
            .collect();
        let logits = model.logits(&device_batch, &rows).unwrap();
        for ((s, p, want), have) in r.logits.iter().zip(&logits) {
            for (c, (w, h)) in want.iter().zip(have).enumerate() {
                assert!(
                    (w - *h as f64).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{name}: logits of sequence {s} position {p}, entry {c}: {h} vs {w}"
                );
            }
        }
    }
}

#[test]
fn f32_matches_transformers_per_token_and_per_parameter() {
    for ops in crate::devices("f32_matches_transformers") {
        for name in FIXTURES {
            check(&ops, name, Precision::F32);
        }
    }
}

#[test]
fn bf16_matches_transformers_within_bf16_tolerances() {
    for ops in crate::devices("bf16_matches_transformers") {
        for name in FIXTURES {
            check(&ops, name, Precision::Bf16);
        }
    }
}

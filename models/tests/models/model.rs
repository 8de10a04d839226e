//! The model's own invariants, in f32 on the CPU (packing on every device): packing changes nothing, gradients match
//! central finite differences, activation checkpointing gives the same gradients, generation
//! with the KV cache equals recomputing the whole forward, and bad input is an error.

use kiln_models::batch::{Batch, Sequence};
use kiln_models::generate::{GenerateOptions, Sampling};
use kiln_models::model::{Model, Pass};
use kiln_models::precision::{download, upload, Precision};
use kiln_models::HostTensor;

use crate::hf::{load, load_on, packed, reference, run, FIXTURES};

#[test]
fn a_packed_batch_gives_each_sequence_its_own_losses() {
    for (ops, name) in crate::devices("a_packed_batch")
        .into_iter()
        .flat_map(|ops| FIXTURES.map(|name| (ops.clone(), name)))
    {
        let r = reference(name);
        let model = load_on(&ops, name, Precision::F32);
        let name = &format!("{name} ({})", ops.device().name());
        let together = run(&model, &packed(&model, &r), Pass::Train);
        for (s, seq) in r.sequences.iter().enumerate() {
            let alone = Batch::pack(&[seq], model.config.vocab).unwrap();
            let forward = model
                .forward(&alone.upload(model.ops()).unwrap(), Pass::Inference)
                .unwrap();
            let losses = forward.token_losses().unwrap();
            assert_eq!(losses.len(), together.losses[s].len() + 1);
            for (t, (&a, &b)) in losses.iter().zip(&together.losses[s]).enumerate() {
                assert!(
                    (a as f64 - b).abs() <= 1e-5,
                    "{name}: sequence {s} position {t}: alone {a}, packed {b}"
                );
            }
        }
    }
}

/// The loss of `batch` with element `index` of parameter `param` set to `value`.
fn loss_with(model: &mut Model, batch: &Batch, param: usize, index: usize, value: f32) -> f64 {
    let device = model.ops().device().clone();
    let buffer = &mut *model.weights.all_mut()[param];
    let mut data = download(buffer).unwrap();
    data[index] = value;
    *buffer = upload(
        &device,
        &HostTensor::new(vec![data.len()], data),
        buffer.dtype(),
    )
    .unwrap();
    let forward = model
        .forward(&batch.upload(model.ops()).unwrap(), Pass::Inference)
        .unwrap();
    forward.loss as f64
}

#[test]
fn gradients_match_central_finite_differences() {
    let name = "qwen2_gqa_bias_untied";
    let r = reference(name);
    let mut model = load(name, Precision::F32);
    let batch = packed(&model, &r);
    let grads = run(&model, &batch, Pass::Train).grads;
    let picks = [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.bias",
        "model.layers.1.self_attn.v_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.layers.0.input_layernorm.weight",
        "model.norm.weight",
        "lm_head.weight",
    ];
    for pick in picks {
        let param = grads.iter().position(|(n, _)| n == pick).unwrap();
        let g = &grads[param].1;
        // The element with the largest gradient: finite differences resolve it best.
        let index = (0..g.len())
            .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
            .unwrap();
        let original = download(&*model.weights.all_mut()[param]).unwrap()[index];
        let eps = 1e-2f32;
        let plus = loss_with(&mut model, &batch, param, index, original + eps);
        let minus = loss_with(&mut model, &batch, param, index, original - eps);
        loss_with(&mut model, &batch, param, index, original);
        let numeric = (plus - minus) / (2.0 * eps as f64);
        let analytic = g[index] as f64;
        assert!(
            (numeric - analytic).abs() <= 2e-2 * analytic.abs() + 5e-4,
            "{pick}[{index}]: backward {analytic}, finite differences {numeric}"
        );
    }
}

#[test]
fn activation_checkpointing_gives_identical_gradients() {
    for name in FIXTURES {
        let r = reference(name);
        let model = load(name, Precision::Bf16);
        let batch = packed(&model, &r);
        let saved = run(&model, &batch, Pass::Train);
        let recomputed = run(&model, &batch, Pass::TrainRecompute);
        assert_eq!(saved.loss, recomputed.loss);
        for ((name, a), (_, b)) in saved.grads.iter().zip(&recomputed.grads) {
            assert!(a == b, "{name}: gradients differ with recomputation");
        }
    }
}

#[test]
fn greedy_generation_with_the_cache_equals_recomputing_the_forward() {
    for (precision, tol) in [(Precision::F32, 1e-4), (Precision::Bf16, 1e-2)] {
        for name in FIXTURES {
            let r = reference(name);
            let model = load(name, precision);
            let options = GenerateOptions {
                max_new_tokens: r.greedy_new.len(),
                sampling: Sampling::Greedy,
                stop_tokens: vec![],
            };
            let generated = model
                .generate(&r.greedy_prompt, &options, |_| Ok(()))
                .unwrap();
            if precision == Precision::F32 {
                assert_eq!(
                    generated, r.greedy_new,
                    "{name}: against transformers' tokens"
                );
            }

            // The same tokens, recomputing the whole forward (the training path, no cache) at
            // each step; the cache's logits equal the recomputed ones.
            let mut ids = r.greedy_prompt.clone();
            let mut cache = model.kv_cache(ids.len() + generated.len()).unwrap();
            let mut cached = model.step(&mut cache, &ids).unwrap();
            for &next in &generated {
                let seq = Sequence::new(ids.clone());
                let batch = Batch::pack(&[&seq], model.config.vocab).unwrap();
                let full = model
                    .logits(&batch.upload(model.ops()).unwrap(), &[ids.len() - 1])
                    .unwrap()
                    .remove(0);
                let diff = full
                    .iter()
                    .zip(&cached)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    diff <= tol,
                    "{name} {precision}: cached logits differ by {diff} at {}",
                    ids.len()
                );
                let argmax = (0..full.len())
                    .max_by(|&a, &b| full[a].total_cmp(&full[b]).then(b.cmp(&a)))
                    .unwrap() as u32;
                assert_eq!(argmax, next, "{name} {precision}");
                ids.push(next);
                cached = model.step(&mut cache, &[next]).unwrap();
            }
        }
    }
}

#[test]
fn sampling_is_seeded_and_stops_at_eos() {
    let name = "llama_gqa_tied";
    let r = reference(name);
    let model = load(name, Precision::F32);
    let sample = |seed| {
        let options = GenerateOptions {
            max_new_tokens: 12,
            sampling: Sampling::Nucleus {
                temperature: 1.0,
                top_p: 0.9,
                seed,
            },
            stop_tokens: vec![],
        };
        model
            .generate(&r.greedy_prompt, &options, |_| Ok(()))
            .unwrap()
    };
    assert_eq!(sample(7), sample(7));
    assert_ne!(sample(7), sample(8));
    let first = r.greedy_new[0];
    let options = GenerateOptions {
        max_new_tokens: 10,
        sampling: Sampling::Greedy,
        stop_tokens: vec![first],
    };
    assert_eq!(
        model
            .generate(&r.greedy_prompt, &options, |_| Ok(()))
            .unwrap(),
        vec![first]
    );
}

#[test]
fn token_ids_past_the_vocabulary_are_errors() {
    let model = load("llama_gqa_tied", Precision::F32);
    let vocab = model.config.vocab as u32;
    let err = Batch::pack(&[&Sequence::new(vec![1, vocab, 2])], vocab as usize).unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    let bad_label = Sequence {
        input_ids: vec![1, 2, 3],
        labels: Some(vec![1, 2, vocab as i32 + 5]),
    };
    assert!(Batch::pack(&[&bad_label], vocab as usize).is_err());
    let mut cache = model.kv_cache(4).unwrap();
    assert!(model.step(&mut cache, &[vocab]).is_err());
    assert!(model.step(&mut cache, &[1, 2, 3, 4, 5]).is_err());
}

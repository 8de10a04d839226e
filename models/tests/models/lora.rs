//! PEFT LoRA adapters merged into a model (`Model::merge_adapter`) against the float64
//! references `tests/fixtures/hf/make_adapter.py` computed and checked against PEFT itself
//! (one adapter with `lora_alpha / r`, one with rsLoRA's `lora_alpha / sqrt(r)`).

use kiln_models::generate::{GenerateOptions, Sampling};
use kiln_models::model::Pass;
use kiln_models::precision::Precision;
use serde_json::Value;

use crate::hf::{fixture_dir, load, load_on, packed, reference};

fn adapter_reference(name: &str) -> Value {
    let path = fixture_dir(name).join("adapter/reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn merged_adapters_match_peft_per_token() {
    for (ops, name) in crate::devices("merged_adapters_match_peft")
        .into_iter()
        .flat_map(|ops| {
            ["qwen2_gqa_bias_untied", "llama_mha_untied_bias"].map(|n| (ops.clone(), n))
        })
    {
        let r = reference(name);
        let want = adapter_reference(name);
        let mut model = load_on(&ops, name, Precision::F32);
        model
            .merge_adapter(fixture_dir(name).join("adapter"))
            .unwrap();
        let batch = packed(&model, &r);
        let forward = model
            .forward(&batch.upload(model.ops()).unwrap(), Pass::Inference)
            .unwrap();
        let losses = forward.token_losses().unwrap();
        let loss = want["loss"].as_f64().unwrap();
        assert!(
            (forward.loss as f64 - loss).abs() <= 1e-4,
            "{name}: {} vs {loss}",
            forward.loss
        );
        for (s, seq) in want["sequences"].as_array().unwrap().iter().enumerate() {
            let start = batch.cu_seqlens[s];
            for (t, w) in seq["losses"].as_array().unwrap().iter().enumerate() {
                let got = losses[start + t] as f64;
                match w.as_f64() {
                    Some(w) => assert!((got - w).abs() <= 1e-4, "{name} {s}/{t}: {got} vs {w}"),
                    None => assert_eq!(got, 0.0),
                }
            }
        }
        let greedy = &want["greedy"];
        let ids = |v: &Value| -> Vec<u32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        };
        let (prompt, new) = (ids(&greedy["prompt"]), ids(&greedy["new_tokens"]));
        let options = GenerateOptions {
            max_new_tokens: new.len(),
            sampling: Sampling::Greedy,
            stop_tokens: vec![],
        };
        assert_eq!(
            model.generate(&prompt, &options, |_| Ok(())).unwrap(),
            new,
            "{name}"
        );
    }
}

#[test]
fn malformed_adapters_are_errors_naming_the_file() {
    let name = "qwen2_gqa_bias_untied";
    let source = fixture_dir(name).join("adapter");
    let dir = tempfile::tempdir().unwrap();
    let copy = |file: &str| std::fs::copy(source.join(file), dir.path().join(file)).unwrap();
    copy("adapter_model.safetensors");
    let config_text = std::fs::read_to_string(source.join("adapter_config.json")).unwrap();
    let config_path = dir.path().join("adapter_config.json");
    let mut model = load(name, Precision::F32);

    // The rank the config claims does not fit the tensors.
    std::fs::write(&config_path, config_text.replace("\"r\": 4", "\"r\": 5")).unwrap();
    let err = model.merge_adapter(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("adapter_model.safetensors") && err.contains("rank 5"),
        "{err}"
    );

    std::fs::write(
        &config_path,
        config_text.replace("\"peft_type\": \"LORA\"", "\"peft_type\": \"IA3\""),
    )
    .unwrap();
    let err = model.merge_adapter(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("adapter_config.json") && err.contains("IA3"),
        "{err}"
    );

    std::fs::write(&config_path, "{\"r\": 4").unwrap();
    let err = model.merge_adapter(dir.path()).unwrap_err().to_string();
    assert!(err.contains("adapter_config.json"), "{err}");

    std::fs::remove_file(dir.path().join("adapter_model.safetensors")).unwrap();
    std::fs::write(&config_path, &config_text).unwrap();
    let err = model.merge_adapter(dir.path()).unwrap_err().to_string();
    assert!(err.contains("adapter_model.safetensors"), "{err}");
}

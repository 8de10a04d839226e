//! `ModelConfig`: real Hugging Face configs, their parameter lists (counted against the published
//! parameter counts), defaults, refusals and errors that name the file and the key.

use kiln_models::config::{Architecture, Llama3RopeScaling, RopeScaling};
use kiln_models::{Error, ModelConfig};
use serde_json::{json, Value};

/// Qwen2.5-0.5B-Instruct's config.json (as published).
fn qwen2_5_0_5b() -> Value {
    json!({
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "hidden_act": "silu",
        "hidden_size": 896,
        "initializer_range": 0.02,
        "intermediate_size": 4864,
        "max_position_embeddings": 32768,
        "max_window_layers": 21,
        "model_type": "qwen2",
        "num_attention_heads": 14,
        "num_hidden_layers": 24,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": true,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.43.1",
        "use_cache": true,
        "use_sliding_window": false,
        "vocab_size": 151936
    })
}

/// Llama-3.2-1B-Instruct's config.json (as published).
fn llama3_2_1b() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        "head_dim": 64,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "initializer_range": 0.02,
        "intermediate_size": 8192,
        "max_position_embeddings": 131072,
        "mlp_bias": false,
        "model_type": "llama",
        "num_attention_heads": 32,
        "num_hidden_layers": 16,
        "num_key_value_heads": 8,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3"
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": true,
        "torch_dtype": "bfloat16",
        "use_cache": true,
        "vocab_size": 128256
    })
}

/// Mistral-7B-v0.3's config.json (as published).
fn mistral_7b_v0_3() -> Value {
    json!({
        "architectures": ["MistralForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "model_type": "mistral",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "sliding_window": null,
        "tie_word_embeddings": false,
        "torch_dtype": "bfloat16",
        "vocab_size": 32768
    })
}

fn parse(config: &Value) -> kiln_models::Result<ModelConfig> {
    ModelConfig::from_json_str(&config.to_string(), "test/config.json")
}

fn with(mut config: Value, key: &str, value: Value) -> Value {
    config[key] = value;
    config
}

fn without(mut config: Value, key: &str) -> Value {
    config.as_object_mut().unwrap().remove(key);
    config
}

/// The error's message, which must name the file.
fn error_of(config: &Value) -> String {
    let message = parse(config).unwrap_err().to_string();
    assert!(message.starts_with("test/config.json"), "{message}");
    message
}

#[test]
fn qwen2_reads_every_field() {
    let c = parse(&qwen2_5_0_5b()).unwrap();
    assert_eq!(c.architecture, Architecture::Qwen2);
    assert_eq!(
        (
            c.hidden,
            c.intermediate,
            c.layers,
            c.heads,
            c.kv_heads,
            c.head_dim,
            c.vocab
        ),
        (896, 4864, 24, 14, 2, 64, 151936)
    );
    assert_eq!(c.rope_theta, 1e6);
    assert_eq!(c.rope_scaling, None);
    assert_eq!(c.rms_norm_eps, 1e-6);
    assert!(c.tie_word_embeddings);
    assert!(c.qkv_bias);
    assert_eq!(c.max_positions, 32768);
    assert_eq!(c.bos_token_id, Some(151643));
    assert_eq!(c.eos_token_ids, vec![151645]);
}

#[test]
fn llama3_reads_rope_scaling_and_eos_lists() {
    let c = parse(&llama3_2_1b()).unwrap();
    assert_eq!(c.architecture, Architecture::Llama);
    assert!(!c.qkv_bias);
    assert_eq!((c.heads, c.kv_heads, c.head_dim), (32, 8, 64));
    assert_eq!(c.rope_theta, 500000.0);
    assert_eq!(
        c.rope_scaling,
        Some(RopeScaling::Llama3(Llama3RopeScaling {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        }))
    );
    assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
    assert_eq!(c.bos_token_id, Some(128000));
}

/// Published parameter counts (`model.num_parameters()` in transformers).
#[test]
fn parameter_counts_match_the_published_models() {
    assert_eq!(
        parse(&qwen2_5_0_5b()).unwrap().parameter_count(),
        494_032_768
    );
    assert_eq!(
        parse(&llama3_2_1b()).unwrap().parameter_count(),
        1_235_814_400
    );
    assert_eq!(
        parse(&mistral_7b_v0_3()).unwrap().parameter_count(),
        7_248_023_552
    );
}

#[test]
fn parameters_list_names_and_shapes_in_order() {
    let c = parse(&with(
        with(qwen2_5_0_5b(), "num_hidden_layers", json!(2)),
        "tie_word_embeddings",
        json!(false),
    ))
    .unwrap();
    let params = c.parameters();
    let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 1 + 2 * 12 + 2);
    assert_eq!(names[0], "model.embed_tokens.weight");
    assert_eq!(
        &names[1..15],
        &[
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.q_proj.bias",
            "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.self_attn.k_proj.bias",
            "model.layers.0.self_attn.v_proj.weight",
            "model.layers.0.self_attn.v_proj.bias",
            "model.layers.0.self_attn.o_proj.weight",
            "model.layers.0.post_attention_layernorm.weight",
            "model.layers.0.mlp.gate_proj.weight",
            "model.layers.0.mlp.up_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.1.input_layernorm.weight",
            "model.layers.1.self_attn.q_proj.weight",
        ][..14]
    );
    let shape = |name: &str| params.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(shape("model.embed_tokens.weight"), vec![151936, 896]);
    assert_eq!(
        shape("model.layers.1.self_attn.q_proj.weight"),
        vec![896, 896]
    );
    assert_eq!(
        shape("model.layers.1.self_attn.k_proj.weight"),
        vec![128, 896]
    );
    assert_eq!(shape("model.layers.1.self_attn.v_proj.bias"), vec![128]);
    assert_eq!(
        shape("model.layers.1.self_attn.o_proj.weight"),
        vec![896, 896]
    );
    assert_eq!(shape("model.layers.1.mlp.up_proj.weight"), vec![4864, 896]);
    assert_eq!(
        shape("model.layers.1.mlp.down_proj.weight"),
        vec![896, 4864]
    );
    assert_eq!(names[names.len() - 2], "model.norm.weight");
    assert_eq!(names[names.len() - 1], "lm_head.weight");
    assert_eq!(shape("lm_head.weight"), vec![151936, 896]);

    let tied = parse(&qwen2_5_0_5b()).unwrap().parameters();
    assert!(tied.iter().all(|(n, _)| n != "lm_head.weight"));
    let llama = parse(&llama3_2_1b()).unwrap().parameters();
    assert!(llama.iter().all(|(n, _)| !n.ends_with(".bias")));
}

/// A head size that differs from hidden / heads (as in Qwen3 or Gemma) shapes the projections.
#[test]
fn head_dim_may_differ_from_hidden_over_heads() {
    let c = parse(&with(llama3_2_1b(), "head_dim", json!(128))).unwrap();
    let params = c.parameters();
    let shape = |name: &str| params.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(
        shape("model.layers.0.self_attn.q_proj.weight"),
        vec![32 * 128, 2048]
    );
    assert_eq!(
        shape("model.layers.0.self_attn.k_proj.weight"),
        vec![8 * 128, 2048]
    );
    assert_eq!(
        shape("model.layers.0.self_attn.o_proj.weight"),
        vec![2048, 32 * 128]
    );
}

#[test]
fn defaults_for_absent_keys() {
    let mut config = llama3_2_1b();
    for key in [
        "num_key_value_heads",
        "head_dim",
        "rope_theta",
        "rope_scaling",
        "tie_word_embeddings",
        "attention_bias",
        "bos_token_id",
        "eos_token_id",
    ] {
        config = without(config, key);
    }
    let c = parse(&config).unwrap();
    assert_eq!(c.kv_heads, 32);
    assert_eq!(c.head_dim, 2048 / 32);
    assert_eq!(c.rope_theta, 10000.0);
    assert_eq!(c.rope_scaling, None);
    assert!(!c.tie_word_embeddings);
    assert!(!c.qkv_bias);
    assert_eq!(c.bos_token_id, None);
    assert!(c.eos_token_ids.is_empty());
    // null reads as absent.
    let c = parse(&with(llama3_2_1b(), "rope_scaling", Value::Null)).unwrap();
    assert_eq!(c.rope_scaling, None);
}

/// transformers 5 moves rope_theta and the scaling into `rope_parameters`.
#[test]
fn rope_parameters_hold_theta_and_scaling() {
    let mut config = without(without(llama3_2_1b(), "rope_theta"), "rope_scaling");
    config["rope_parameters"] = json!({
        "rope_type": "llama3", "rope_theta": 250000.0, "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192
    });
    let c = parse(&config).unwrap();
    assert_eq!(c.rope_theta, 250000.0);
    let Some(RopeScaling::Llama3(s)) = c.rope_scaling else {
        panic!("no llama3 scaling");
    };
    assert_eq!(s.factor, 8.0);

    let mut config = without(qwen2_5_0_5b(), "rope_theta");
    config["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 1e6});
    let c = parse(&config).unwrap();
    assert_eq!((c.rope_theta, c.rope_scaling), (1e6, None));
}

#[test]
fn unknown_model_type_lists_the_supported_ones() {
    let err = parse(&with(qwen2_5_0_5b(), "model_type", json!("gpt2"))).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    let message = err.to_string();
    for needle in [
        "test/config.json",
        "model_type",
        "gpt2",
        "qwen2",
        "llama",
        "mistral",
    ] {
        assert!(message.contains(needle), "{message}");
    }
}

#[test]
fn other_rope_scalings_are_refused_by_name() {
    for (kind_key, kind) in [
        ("type", "linear"),
        ("rope_type", "dynamic"),
        ("rope_type", "yarn"),
    ] {
        let config = with(
            llama3_2_1b(),
            "rope_scaling",
            json!({ kind_key: kind, "factor": 4.0 }),
        );
        let err = parse(&config).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains(kind) && message.contains("rope_scaling"),
            "{message}"
        );
    }
    let config = with(
        llama3_2_1b(),
        "rope_scaling",
        json!({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
               "original_max_position_embeddings": 8192}),
    );
    let message = error_of(&config);
    assert!(
        message.contains("high_freq_factor") && message.contains("missing"),
        "{message}"
    );
}

#[test]
fn sliding_windows_are_refused() {
    // Mistral 7B v0.1: a 4096-position window over 32768 positions.
    let err = parse(&with(mistral_7b_v0_3(), "sliding_window", json!(4096))).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("sliding_window"), "{err}");
    // A window as long as the context changes nothing.
    assert!(parse(&with(mistral_7b_v0_3(), "sliding_window", json!(32768))).is_ok());

    let err = parse(&with(qwen2_5_0_5b(), "use_sliding_window", json!(true))).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("use_sliding_window"), "{err}");
}

#[test]
fn llama_attention_bias_adds_q_k_v_and_o_biases_and_mlp_bias_is_refused() {
    let c = parse(&with(llama3_2_1b(), "attention_bias", json!(true))).unwrap();
    assert!(c.qkv_bias && c.o_bias);
    let names: Vec<String> = c.parameters().into_iter().map(|(n, _)| n).collect();
    for proj in ["q", "k", "v", "o"] {
        let bias = format!("model.layers.0.self_attn.{proj}_proj.bias");
        assert!(names.contains(&bias), "{bias} missing");
    }
    let plain = parse(&llama3_2_1b()).unwrap();
    assert!(!plain.qkv_bias && !plain.o_bias);
    let qwen = parse(&qwen2_5_0_5b()).unwrap();
    assert!(qwen.qkv_bias && !qwen.o_bias);
    let err = parse(&with(llama3_2_1b(), "mlp_bias", json!(true))).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("mlp_bias"), "{err}");
}

#[test]
fn bad_values_name_the_key() {
    let cases: Vec<(Value, &str)> = vec![
        (without(qwen2_5_0_5b(), "hidden_size"), "hidden_size"),
        (with(qwen2_5_0_5b(), "hidden_size", json!(0)), "hidden_size"),
        (
            with(qwen2_5_0_5b(), "hidden_size", json!("896")),
            "hidden_size",
        ),
        (
            with(qwen2_5_0_5b(), "intermediate_size", json!(-1)),
            "intermediate_size",
        ),
        (
            with(qwen2_5_0_5b(), "num_hidden_layers", json!(2.5)),
            "num_hidden_layers",
        ),
        (
            with(qwen2_5_0_5b(), "num_key_value_heads", json!(3)),
            "num_key_value_heads",
        ),
        (
            with(qwen2_5_0_5b(), "num_key_value_heads", json!(0)),
            "num_key_value_heads",
        ),
        (with(qwen2_5_0_5b(), "head_dim", json!(63)), "head_dim"),
        (
            with(qwen2_5_0_5b(), "num_attention_heads", json!(12)),
            "head_dim",
        ),
        (without(qwen2_5_0_5b(), "vocab_size"), "vocab_size"),
        (
            with(qwen2_5_0_5b(), "rms_norm_eps", json!(0.0)),
            "rms_norm_eps",
        ),
        (
            with(qwen2_5_0_5b(), "rope_theta", json!(-1.0)),
            "rope_theta",
        ),
        (
            with(qwen2_5_0_5b(), "tie_word_embeddings", json!("yes")),
            "tie_word_embeddings",
        ),
        (
            with(qwen2_5_0_5b(), "eos_token_id", json!([1, "x"])),
            "eos_token_id",
        ),
        (
            with(qwen2_5_0_5b(), "bos_token_id", json!(-3)),
            "bos_token_id",
        ),
        (
            without(qwen2_5_0_5b(), "max_position_embeddings"),
            "max_position_embeddings",
        ),
        (
            with(qwen2_5_0_5b(), "hidden_act", json!("gelu")),
            "hidden_act",
        ),
        (without(qwen2_5_0_5b(), "model_type"), "model_type"),
    ];
    for (config, key) in cases {
        let message = error_of(&config);
        assert!(message.contains(&format!("`{key}`")), "{key}: {message}");
    }
}

#[test]
fn malformed_json_names_the_file() {
    for text in ["", "{", "[1, 2]", "{\"model_type\": \"qwen2\",}"] {
        let err = ModelConfig::from_json_str(text, "dir/config.json").unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "{err:?}");
        assert!(err.to_string().starts_with("dir/config.json"), "{err}");
    }
}

#[test]
fn to_json_reads_back_equal() {
    for config in [qwen2_5_0_5b(), llama3_2_1b(), mistral_7b_v0_3()] {
        let c = parse(&config).unwrap();
        let text = c.to_json();
        let back = ModelConfig::from_json_str(&text, "written/config.json").unwrap();
        assert_eq!(back, c);
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["model_type"], config["model_type"]);
        assert_eq!(value["architectures"], config["architectures"]);
    }
}

#[test]
fn load_reads_a_folder_or_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, mistral_7b_v0_3().to_string()).unwrap();
    let from_dir = ModelConfig::load(dir.path()).unwrap();
    let from_file = ModelConfig::load(&path).unwrap();
    assert_eq!(from_dir, from_file);
    assert_eq!(from_dir.architecture, Architecture::Mistral);

    let missing = ModelConfig::load(dir.path().join("nope")).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }), "{missing:?}");
    assert!(missing.to_string().contains("nope"), "{missing}");

    std::fs::write(&path, "{\"model_type\": 3}").unwrap();
    let err = ModelConfig::load(dir.path()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("config.json") && message.contains("model_type"),
        "{message}"
    );
}

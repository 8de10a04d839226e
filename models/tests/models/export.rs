//! Export: the GGUF writer against llama.cpp's `gguf` package (files `gguf.GGUFWriter` wrote
//! rewritten byte for byte, encodings bit for bit those of `gguf.quants.quantize`, from
//! tests/fixtures/gguf/make_export.py), written files read back by Kiln's own reader, Hugging
//! Face folders to GGUF and back through `gguf::import` (weights, config, tokenizer ids), and
//! merged adapter exports against the PEFT references of tests/fixtures/hf.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_models::config::ModelConfig;
use kiln_models::export::{model_tensors, write_model_folder, MARKER};
use kiln_models::gguf::{
    self, GgmlType, GgufExport, GgufFile, GgufModelConfig, MetadataValue, TensorData, WriteTensor,
};
use kiln_models::model::{Model, Pass};
use kiln_models::precision::Precision;
use kiln_models::weights::{self, SafeTensors, SaveDtype};
use kiln_models::HostTensor;

use crate::hf::{cpu_ops, fixture_dir, load, packed, reference, FIXTURES};

fn gguf_fixture(name: &str) -> PathBuf {
    crate::repo_root().join("tests/fixtures/gguf").join(name)
}

fn tokenizer_fixture(name: &str) -> PathBuf {
    crate::repo_root()
        .join("tests/fixtures/tokenizer")
        .join(name)
}

/// A small deterministic generator (SplitMix64) for random test values.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

/// Every metadata pair and tensor (raw bytes) of `file`, as the writer takes them.
fn contents(file: &GgufFile) -> (Vec<(String, MetadataValue)>, Vec<WriteTensor<'_>>) {
    let metadata = file.metadata().entries().to_vec();
    let tensors = file
        .tensors()
        .iter()
        .map(|t| WriteTensor {
            name: t.name.clone(),
            shape: t.shape(),
            ggml_type: t.ggml_type,
            data: TensorData::Raw(file.tensor_bytes(t)),
        })
        .collect();
    (metadata, tensors)
}

#[test]
fn files_the_gguf_package_wrote_are_rewritten_byte_for_byte() {
    // quants.gguf: metadata of every value type (a nested array too), alignment 64, tensors of
    // every dequantizable type; encode.gguf: the default alignment, without the key.
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "quants.gguf",
        "encode.gguf",
        "tiny-llama.gguf",
        "tiny-qwen2.gguf",
    ] {
        let file = GgufFile::open(gguf_fixture(name)).unwrap();
        let (metadata, tensors) = contents(&file);
        let out = dir.path().join(name);
        let report = gguf::write(&out, &metadata, &tensors).unwrap();
        let want = std::fs::read(gguf_fixture(name)).unwrap();
        let got = std::fs::read(&out).unwrap();
        assert_eq!(report.bytes, got.len() as u64, "{name}");
        assert_eq!(report.data_start, file.data_start(), "{name}");
        assert_eq!(report.alignment, file.alignment(), "{name}");
        assert_eq!(got.len(), want.len(), "{name}: length");
        assert!(got == want, "{name}: the bytes differ");
    }
    // only the files written: no temporary left
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
}

#[test]
fn encodings_are_bit_for_bit_those_of_gguf_quants() {
    let file = GgufFile::open(gguf_fixture("encode.gguf")).unwrap();
    let mut checked = BTreeMap::new();
    for src in file.tensors().iter().filter(|t| t.name.ends_with(".src")) {
        let case = src.name.trim_end_matches(".src");
        let values = file.dequantize_info(src).unwrap().data;
        for (suffix, ty) in [
            ("f16", GgmlType::F16),
            ("bf16", GgmlType::Bf16),
            ("q8_0", GgmlType::Q8_0),
        ] {
            let Some(want) = file.tensor(&format!("{case}.{suffix}")) else {
                continue;
            };
            let got = gguf::quantize(ty, &values).unwrap();
            let want = file.tensor_bytes(want);
            assert_eq!(got.len(), want.len(), "{case}.{suffix}");
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert_eq!(g, w, "{case}.{suffix}: byte {i}");
            }
            *checked.entry(suffix).or_insert(0) += 1;
            // decoded values are representable: encoding them again gives the same bytes
            let decoded = gguf::dequantize(ty, want).unwrap();
            if ty != GgmlType::Q8_0 {
                assert_eq!(
                    gguf::quantize(ty, &decoded).unwrap(),
                    want,
                    "{case}.{suffix}"
                );
            }
        }
    }
    assert_eq!(checked["f16"], 6);
    assert_eq!(checked["bf16"], 6);
    assert_eq!(checked["q8_0"], 5);
    // Q8_0 rounds half away from zero at exact ties (max 127: d = 1)
    let ties: Vec<f32> = (0..32)
        .map(|i| if i == 0 { 127.0 } else { i as f32 - 16.5 })
        .collect();
    let q = gguf::quantize(GgmlType::Q8_0, &ties).unwrap();
    assert_eq!(&q[..2], &gguf::f32_to_f16(1.0).to_le_bytes());
    assert_eq!(q[3] as i8, -16, "-15.5");
    assert_eq!(q[18] as i8, -1, "-0.5");
    assert_eq!(q[20] as i8, 2, "1.5");
}

/// The metadata of every type the exporter uses, and the rest.
fn sample_metadata() -> Vec<(String, MetadataValue)> {
    use MetadataValue as V;
    let s = |x: &str| V::String(x.to_string());
    vec![
        ("general.architecture".into(), s("llama")),
        ("general.alignment".into(), V::U32(64)),
        ("t.u32".into(), V::U32(4_000_000_000)),
        ("t.i32".into(), V::I32(-7)),
        ("t.f32".into(), V::F32(1e-5)),
        ("t.bool".into(), V::Bool(true)),
        ("t.string".into(), s("héllo ✓ <|im_start|>")),
        ("t.empty_string".into(), s("")),
        (
            "t.strings".into(),
            V::Array(vec![s("a"), s(""), s("Ġthe"), s("日本")]),
        ),
        (
            "t.i32s".into(),
            V::Array(vec![V::I32(1), V::I32(-3), V::I32(5)]),
        ),
        ("t.f32s".into(), V::Array(vec![V::F32(0.5), V::F32(-2.25)])),
        (
            "t.nested".into(),
            V::Array(vec![V::Array(vec![V::U8(1)]), V::Array(vec![])]),
        ),
        ("t.u8".into(), V::U8(200)),
        ("t.i8".into(), V::I8(-100)),
        ("t.u16".into(), V::U16(60000)),
        ("t.i16".into(), V::I16(-30000)),
        ("t.u64".into(), V::U64(u64::MAX)),
        ("t.i64".into(), V::I64(i64::MIN)),
        ("t.f64".into(), V::F64(-2.5e300)),
    ]
}

#[test]
fn written_files_read_back_with_every_key_and_tensor() {
    let mut rng = Rng(7);
    let metadata = sample_metadata();
    let f32_values = rng.values(3 * 5, 10.0);
    // values the type represents: a round trip is exact
    let round =
        |ty: GgmlType, v: Vec<f32>| gguf::dequantize(ty, &gguf::quantize(ty, &v).unwrap()).unwrap();
    let f16_values = round(GgmlType::F16, rng.values(2 * 3 * 4, 3.0));
    let bf16_values = round(GgmlType::Bf16, rng.values(7 * 8, 1000.0));
    let q8_source = rng.values(4 * 64, 0.1);
    let cases: Vec<(&str, Vec<usize>, GgmlType, &[f32])> = vec![
        ("plain.f32", vec![3, 5], GgmlType::F32, &f32_values),
        ("cube.f16", vec![2, 3, 4], GgmlType::F16, &f16_values),
        ("bf16", vec![7, 8], GgmlType::Bf16, &bf16_values),
        ("q8.weight", vec![4, 64], GgmlType::Q8_0, &q8_source),
        ("one.f32", vec![15], GgmlType::F32, &f32_values),
    ];
    let tensors: Vec<WriteTensor<'_>> = cases
        .iter()
        .map(|(name, shape, ty, values)| WriteTensor {
            name: name.to_string(),
            shape: shape.clone(),
            ggml_type: *ty,
            data: TensorData::F32(values),
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    gguf::write(&path, &metadata, &tensors).unwrap();

    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.metadata().entries(), metadata.as_slice());
    assert_eq!(file.tensors().len(), cases.len());
    for ((name, shape, ty, values), info) in cases.iter().zip(file.tensors()) {
        assert_eq!(&info.name, name);
        assert_eq!(&info.shape(), shape, "{name}");
        assert_eq!(info.ggml_type, *ty, "{name}");
        assert_eq!(info.offset % 64, 0, "{name}");
        let got = file.dequantize_info(info).unwrap().data;
        let want = if *ty == GgmlType::Q8_0 {
            round(GgmlType::Q8_0, values.to_vec())
        } else {
            values.to_vec()
        };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "{name}");
        if *ty == GgmlType::Q8_0 {
            // within half a step of each block's scale, and the f16 rounding of that scale
            for (block, q) in values.chunks(32).zip(got.chunks(32)) {
                let d = block.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
                let bound = d * (0.5 + 127.0 / 2048.0) * (1.0 + 1e-6);
                for (x, y) in block.iter().zip(q) {
                    assert!((x - y).abs() <= bound, "{name}: {x} vs {y}");
                }
            }
        }
    }
}

/// Metadata and tensors that must not be written, and what the error says.
type BadWrite<'a> = (
    Vec<(String, MetadataValue)>,
    Vec<WriteTensor<'a>>,
    &'static str,
);

#[test]
fn bad_writes_are_errors_naming_the_file_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    let values = vec![0.5f32; 48];
    let tensor = |name: &str, shape: Vec<usize>, ty: GgmlType| WriteTensor {
        name: name.into(),
        shape,
        ggml_type: ty,
        data: TensorData::F32(&values),
    };
    let arch = (
        "general.architecture".to_string(),
        MetadataValue::String("llama".into()),
    );
    let cases: Vec<BadWrite<'_>> = vec![
        (vec![arch.clone(), arch.clone()], vec![], "given twice"),
        (
            vec![(
                "mixed".into(),
                MetadataValue::Array(vec![MetadataValue::I32(1), MetadataValue::F32(1.0)]),
            )],
            vec![],
            "one element type",
        ),
        (
            vec![("general.alignment".into(), MetadataValue::U32(48))],
            vec![],
            "power of two",
        ),
        (
            vec![],
            vec![tensor("q", vec![3, 16], GgmlType::Q8_0)],
            "whole Q8_0 blocks",
        ),
        (
            vec![],
            vec![tensor("q", vec![4, 16], GgmlType::F32)],
            "48 values",
        ),
        (
            vec![],
            vec![tensor("k", vec![256], GgmlType::Q4K)],
            "cannot write",
        ),
        (
            vec![],
            vec![tensor(&"x".repeat(64), vec![48], GgmlType::F32)],
            "shorter than 64",
        ),
        (
            vec![],
            vec![
                tensor("a", vec![48], GgmlType::F32),
                tensor("a", vec![48], GgmlType::F32),
            ],
            "given twice",
        ),
    ];
    for (metadata, tensors, want) in cases {
        let err = gguf::write(&path, &metadata, &tensors)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.gguf") && err.contains(want), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{err}");
    }
    let missing = dir.path().join("no/such/folder/x.gguf");
    let err = gguf::write(&missing, &[arch], &[]).unwrap_err().to_string();
    assert!(err.contains("x.gguf"), "{err}");
}

/// The f32 tensors of a Hugging Face folder, by name.
fn folder_tensors(dir: &Path) -> BTreeMap<String, HostTensor> {
    let config = ModelConfig::load(dir).unwrap();
    let st = SafeTensors::open(dir).unwrap();
    config
        .parameters()
        .into_iter()
        .map(|(n, _)| {
            let t = st.get(&n).unwrap();
            (n, t)
        })
        .collect()
}

/// The Hugging Face tensors a GGUF holds: dequantized, Llama's Q/K rows un-permuted.
fn gguf_as_hf(file: &GgufFile, config: &ModelConfig) -> BTreeMap<String, HostTensor> {
    let llama = file.architecture().unwrap() == "llama";
    file.tensors()
        .iter()
        .map(|info| {
            let hf = gguf::hf_name(&info.name).unwrap();
            let t = file.dequantize_info(info).unwrap();
            let t = match hf.qk.filter(|_| llama) {
                Some(gguf::QkRole::Query) => gguf::unpermute_qk(&t, config.heads, "q").unwrap(),
                Some(gguf::QkRole::Key) => gguf::unpermute_qk(&t, config.kv_heads, "k").unwrap(),
                None => t,
            };
            (hf.name, t)
        })
        .collect()
}

/// What writing `t` as `ty` and reading it back gives.
fn rounded(t: &HostTensor, ty: GgmlType) -> Vec<f32> {
    gguf::dequantize(ty, &gguf::quantize(ty, &t.data).unwrap()).unwrap()
}

#[test]
fn hf_fixtures_export_to_gguf_with_llama_cpp_names_types_and_hyperparameters() {
    let dir = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let model_dir = fixture_dir(name);
        let config = ModelConfig::load(&model_dir).unwrap();
        let want = folder_tensors(&model_dir);
        for ty in gguf::EXPORT_TYPES {
            let path = dir.path().join(format!("{name}.{ty}.gguf"));
            let report = gguf::export(&model_dir, &path, *ty).unwrap();
            assert!(report.tokenizer.is_none(), "the fixtures have no tokenizer");
            let file = GgufFile::open(&path).unwrap();
            let md = file.metadata();
            let arch = if name.starts_with("qwen2") {
                "qwen2"
            } else {
                "llama"
            };
            assert_eq!(file.architecture().unwrap(), arch);
            assert_eq!(report.bytes, std::fs::metadata(&path).unwrap().len());
            assert_eq!(file.alignment(), 32);
            assert_eq!(md.get("general.alignment"), Some(&MetadataValue::U32(32)));
            let file_type = match ty {
                GgmlType::F32 => 0,
                GgmlType::F16 => 1,
                GgmlType::Q8_0 => 7,
                _ => 32,
            };
            assert_eq!(md.get_usize("general.file_type").unwrap(), Some(file_type));
            let key = |k: &str| md.get_usize(&format!("{arch}.{k}")).unwrap();
            assert_eq!(key("block_count"), Some(config.layers));
            assert_eq!(key("embedding_length"), Some(config.hidden));
            assert_eq!(key("feed_forward_length"), Some(config.intermediate));
            assert_eq!(key("attention.head_count"), Some(config.heads));
            assert_eq!(key("attention.head_count_kv"), Some(config.kv_heads));
            assert_eq!(key("context_length"), Some(config.max_positions));
            assert_eq!(key("rope.dimension_count"), Some(config.head_dim));

            // The import's reading of the hyperparameters gives the folder's config back.
            let c = GgufModelConfig::from_gguf(&file).unwrap();
            assert_eq!(
                (c.hidden_size, c.intermediate_size, c.num_hidden_layers),
                (config.hidden, config.intermediate, config.layers)
            );
            assert_eq!(
                (
                    c.num_attention_heads,
                    c.num_key_value_heads,
                    c.head_dim,
                    c.vocab_size
                ),
                (config.heads, config.kv_heads, config.head_dim, config.vocab)
            );
            assert_eq!(c.rope_theta, config.rope_theta, "{name}");
            assert_eq!(c.rms_norm_eps, config.rms_norm_eps, "{name}");
            assert_eq!(c.tie_word_embeddings, config.tie_word_embeddings, "{name}");
            assert_eq!(c.attention_bias, config.qkv_bias, "{name}");
            assert_eq!(
                file.tensor("output.weight").is_none(),
                config.tie_word_embeddings
            );

            // Every tensor, in its type, back to the folder's values within that type's
            // rounding (exactly the rounding of the type).
            let got = gguf_as_hf(&file, &config);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{name} {ty}"
            );
            for info in file.tensors() {
                let expected_ty = if info.dims.len() == 1 {
                    GgmlType::F32
                } else if info.dims[0] % 32 != 0 && *ty == GgmlType::Q8_0 {
                    GgmlType::F16
                } else {
                    *ty
                };
                assert_eq!(info.ggml_type, expected_ty, "{name} {ty}: {}", info.name);
                let hf = gguf::hf_name(&info.name).unwrap().name;
                let (g, w) = (&got[&hf], &want[&hf]);
                assert_eq!(g.shape, w.shape, "{name}: {hf}");
                let w = rounded(w, info.ggml_type);
                let same = g
                    .data
                    .iter()
                    .zip(&w)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{name} {ty}: {hf} is not the folder's values in {expected_ty}"
                );
            }
            // the permutation is really applied to Llama's rows
            let q = file.dequantize("blk.0.attn_q.weight").unwrap();
            let hf_q = &want["model.layers.0.self_attn.q_proj.weight"];
            if *ty == GgmlType::F32 {
                assert_eq!(arch == "llama", q.data != hf_q.data, "{name}");
            }
        }
    }
}

/// A Hugging Face folder in `dir`: fixture `fixture`'s config with `vocab` tokens, random
/// weights, and the tokenizer files of tests/fixtures/tokenizer/`tokenizer`.
fn model_with_tokenizer(dir: &Path, fixture: &str, tokenizer: &str, vocab: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let text = std::fs::read_to_string(fixture_dir(fixture).join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    config["vocab_size"] = vocab.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(tokenizer_fixture(tokenizer).join(file), dir.join(file)).unwrap();
    }
    let parsed = ModelConfig::load(dir).unwrap();
    let mut rng = Rng(seed);
    let tensors: Vec<(String, HostTensor)> = parsed
        .parameters()
        .into_iter()
        .map(|(n, shape)| {
            let data = rng.values(shape.iter().product(), 0.5);
            (n, HostTensor::new(shape, data))
        })
        .collect();
    let refs: Vec<(&str, &HostTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    weights::save(
        dir.join("model.safetensors"),
        &refs,
        SaveDtype::F32,
        &BTreeMap::new(),
    )
    .unwrap();
}

const STRINGS: &[&str] = &[
    "Hello world",
    "Hello, world! How are you?",
    " leading space and trailing ",
    "tabs\tand\nnewlines\n\n\nend",
    "1234567890 3.14159",
    "don't I'm we'll they've",
    "émigré café naïve 日本語 🙂",
    "<|im_start|>user\nHi<|im_end|>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>",
    "",
];

fn ids(tok: &tokenizers::Tokenizer, text: &str, special: bool) -> Vec<u32> {
    tok.encode(text, special).unwrap().get_ids().to_vec()
}

#[test]
fn exported_ggufs_import_back_to_the_same_weights_config_and_token_ids() {
    let dir = tempfile::tempdir().unwrap();
    // (fixture config, tokenizer, vocabulary: the tokenizer's, or padded past it)
    let cases = [
        ("qwen2_gqa_bias_untied", "chatml", 637, "qwen2"),
        ("llama_gqa_tied", "llama3", 700, "llama-bpe"),
        ("llama_mha_untied_bias", "chatml", 650, "qwen2"),
    ];
    for (i, (fixture, tokenizer, vocab, pre)) in cases.into_iter().enumerate() {
        let model_dir = dir.path().join(format!("{fixture}-{tokenizer}"));
        model_with_tokenizer(&model_dir, fixture, tokenizer, vocab, 100 + i as u64);
        let path = dir.path().join(format!("{fixture}.gguf"));
        let report = gguf::export(&model_dir, &path, GgmlType::F32).unwrap();
        let tok = report.tokenizer.as_ref().unwrap();
        assert_eq!((tok.model.as_str(), tok.pre.as_str()), ("gpt2", pre));
        assert_eq!(tok.tokens, vocab);
        assert_eq!(tok.padded, if vocab == 650 { 13 } else { 0 });

        let imported = dir.path().join(format!("{fixture}-imported"));
        let import = gguf::import(&path, &imported).unwrap();
        assert_eq!(import.tokenizer, ("gpt2".to_string(), vocab));
        // the same model, weights bit for bit
        let (c0, c1) = (
            ModelConfig::load(&model_dir).unwrap(),
            ModelConfig::load(&imported).unwrap(),
        );
        assert_eq!(
            (
                c1.architecture == c0.architecture,
                c1.hidden,
                c1.layers,
                c1.heads,
                c1.kv_heads
            ),
            (true, c0.hidden, c0.layers, c0.heads, c0.kv_heads)
        );
        assert_eq!(
            (c1.vocab, c1.head_dim, c1.qkv_bias, c1.tie_word_embeddings),
            (c0.vocab, c0.head_dim, c0.qkv_bias, c0.tie_word_embeddings)
        );
        assert_eq!(
            (c1.rope_theta, c1.rms_norm_eps),
            (c0.rope_theta, c0.rms_norm_eps)
        );
        assert_eq!(
            folder_tensors(&imported),
            folder_tensors(&model_dir),
            "{fixture}"
        );

        // the same token ids, with and without the special tokens the tokenizer adds
        let a = tokenizers::Tokenizer::from_file(model_dir.join("tokenizer.json")).unwrap();
        let b = tokenizers::Tokenizer::from_file(imported.join("tokenizer.json")).unwrap();
        for text in STRINGS {
            assert_eq!(
                ids(&a, text, false),
                ids(&b, text, false),
                "{fixture}: {text:?}"
            );
            assert_eq!(
                ids(&a, text, true),
                ids(&b, text, true),
                "{fixture}: {text:?}"
            );
            let decoded =
                |t: &tokenizers::Tokenizer| t.decode(&ids(&a, text, false), false).unwrap();
            assert_eq!(decoded(&a), decoded(&b), "{fixture}: {text:?}");
        }
        // special tokens and the chat template survive
        let read = |d: &Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(d.join("tokenizer_config.json")).unwrap())
                .unwrap()
        };
        let (ta, tb) = (read(&model_dir), read(&imported));
        assert_eq!(ta["chat_template"], tb["chat_template"], "{fixture}");
        let content = |v: &serde_json::Value| match v {
            serde_json::Value::Object(o) => o["content"].clone(),
            other => other.clone(),
        };
        assert_eq!(
            content(&ta["eos_token"]),
            content(&tb["eos_token"]),
            "{fixture}"
        );
        let k0 = kiln_models::Tokenizer::load(&model_dir).unwrap();
        let k1 = kiln_models::Tokenizer::load(&imported).unwrap();
        assert_eq!(k0.eos_ids().first(), k1.eos_ids().first(), "{fixture}");
    }
}

#[test]
fn a_llama_cpp_gguf_imported_and_exported_again_is_the_same_model() {
    // tiny-*.gguf were written as llama.cpp's converter writes files (make.py); after import
    // and export the metadata that describes the model and every tensor's values are back.
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "qwen2"] {
        let original = GgufFile::open(gguf_fixture(&format!("tiny-{arch}.gguf"))).unwrap();
        let imported = dir.path().join(arch);
        gguf::import(original.path(), &imported).unwrap();
        let path = dir.path().join(format!("{arch}.gguf"));
        gguf::export(&imported, &path, GgmlType::F32).unwrap();
        let exported = GgufFile::open(&path).unwrap();
        let (a, b) = (original.metadata(), exported.metadata());
        let mut compared = 0;
        for (key, value) in a.entries() {
            if key == "general.name" {
                continue;
            }
            assert_eq!(b.get(key), Some(value), "{arch}: key `{key}`");
            compared += 1;
        }
        assert!(compared >= 18, "{arch}: {compared} keys");
        assert_eq!(exported.tensors().len(), original.tensors().len());
        for info in original.tensors() {
            let back = exported.tensor(&info.name).unwrap();
            assert_eq!(back.dims, info.dims, "{arch}: {}", info.name);
            let (x, y) = (
                original.dequantize_info(info).unwrap().data,
                exported.dequantize_info(back).unwrap().data,
            );
            assert!(
                x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{arch}: {} differs",
                info.name
            );
        }
    }
}

#[test]
fn unsupported_models_and_tokenizers_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("m");
    model_with_tokenizer(&base, "llama_gqa_tied", "llama3", 700, 1);
    let out = dir.path().join("x.gguf");
    let fail = |model: &Path| {
        gguf::export(model, &out, GgmlType::F16)
            .unwrap_err()
            .to_string()
    };

    // a SentencePiece-style vocabulary
    let spm = dir.path().join("spm");
    model_with_tokenizer(&spm, "llama_gqa_tied", "spm", 856, 2);
    let err = fail(&spm);
    assert!(
        err.contains("tokenizer.json") && err.contains("byte-level"),
        "{err}"
    );
    // a tokenizer with more ids than the model
    let small = dir.path().join("small");
    model_with_tokenizer(&small, "llama_gqa_tied", "llama3", 600, 3);
    let err = fail(&small);
    assert!(
        err.contains("tokenizer.json") && err.contains("past the model's vocabulary"),
        "{err}"
    );
    // a pre-tokenizer Kiln does not know
    let odd = dir.path().join("odd");
    model_with_tokenizer(&odd, "llama_gqa_tied", "llama3", 700, 4);
    let tj = odd.join("tokenizer.json");
    let text = std::fs::read_to_string(&tj).unwrap();
    std::fs::write(&tj, text.replace("\\\\p{N}{1,3}", "\\\\p{N}{1,2}")).unwrap();
    let err = fail(&odd);
    assert!(
        err.contains("tokenizer.json") && err.contains("pre-tokenizer"),
        "{err}"
    );
    // rope scaling
    let scaled = dir.path().join("scaled");
    model_with_tokenizer(&scaled, "llama_gqa_tied", "llama3", 700, 5);
    let cj = scaled.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cj).unwrap()).unwrap();
    c["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
    std::fs::write(&cj, c.to_string()).unwrap();
    let err = fail(&scaled);
    assert!(
        err.contains("config.json") && err.contains("rope_scaling"),
        "{err}"
    );
    assert!(!out.exists());
    // the good one works, and a missing tensor is named
    gguf::export(&base, &out, GgmlType::Q8_0).unwrap();
    let tensors = folder_tensors(&base);
    let refs: Vec<(&str, &HostTensor)> = tensors
        .iter()
        .filter(|(n, _)| !n.ends_with("down_proj.weight"))
        .map(|(n, t)| (n.as_str(), t))
        .collect();
    let err = GgufExport::plan(&base, &refs, GgmlType::F16)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("down_proj.weight") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn merged_exports_give_the_peft_reference_losses() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["qwen2_gqa_bias_untied", "llama_mha_untied_bias"] {
        let r = reference(name);
        let want: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture_dir(name).join("adapter/reference.json")).unwrap(),
        )
        .unwrap();
        let mut model = load(name, Precision::F32);
        model
            .merge_adapter(fixture_dir(name).join("adapter"))
            .unwrap();
        let tensors = model_tensors(&model).unwrap();
        let refs: Vec<(&str, &HostTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();

        // The merged folder, and the merged GGUF read back, give PEFT's per-token losses.
        let out = dir.path().join(format!("{name}-merged"));
        write_model_folder(&fixture_dir(name), &refs, SaveDtype::F32, &out).unwrap();
        assert!(out.join(MARKER).is_file());
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["torch_dtype"], "float32");
        assert_eq!(config["dtype"], "float32");
        let gguf_path = dir.path().join(format!("{name}.gguf"));
        GgufExport::plan(&fixture_dir(name), &refs, GgmlType::F32)
            .unwrap()
            .write(&gguf_path)
            .unwrap();
        let file = GgufFile::open(&gguf_path).unwrap();
        let from_gguf = gguf_as_hf(&file, &model.config);
        let models = [
            (
                "folder",
                Model::load(&out, cpu_ops(), Precision::F32).unwrap(),
            ),
            (
                "gguf",
                Model::from_tensors(model.config.clone(), cpu_ops(), Precision::F32, |n| {
                    Ok(from_gguf[n].clone())
                })
                .unwrap(),
            ),
        ];
        for (what, m) in models {
            let batch = packed(&m, &r);
            let forward = m
                .forward(&batch.upload(m.ops()).unwrap(), Pass::Inference)
                .unwrap();
            let losses = forward.token_losses().unwrap();
            let loss = want["loss"].as_f64().unwrap();
            assert!(
                (forward.loss as f64 - loss).abs() <= 1e-4,
                "{name} {what}: {}",
                forward.loss
            );
            let base_loss = r.loss;
            assert!(
                (loss - base_loss).abs() > 1e-2,
                "the adapter changes the loss"
            );
            for (s, seq) in want["sequences"].as_array().unwrap().iter().enumerate() {
                let start = batch.cu_seqlens[s];
                for (t, w) in seq["losses"].as_array().unwrap().iter().enumerate() {
                    let got = losses[start + t] as f64;
                    match w.as_f64() {
                        Some(w) => assert!((got - w).abs() <= 1e-4, "{name} {what} {s}/{t}"),
                        None => assert_eq!(got, 0.0),
                    }
                }
            }
        }

        // bf16: the folder's weights are the merged ones rounded to bf16
        let out16 = dir.path().join(format!("{name}-bf16"));
        write_model_folder(&fixture_dir(name), &refs, SaveDtype::BF16, &out16).unwrap();
        let st = SafeTensors::open(&out16).unwrap();
        let (n, t) = &tensors[3];
        assert_eq!(st.info(n).unwrap().dtype, weights::Dtype::BF16);
        let back = st.get(n).unwrap();
        let bf = |x: f32| half::bf16::from_f32(x).to_f32();
        assert!(
            back.data.iter().zip(&t.data).all(|(a, b)| *a == bf(*b)),
            "{n}"
        );
    }
}

#[test]
fn model_folders_replace_only_earlier_exports_and_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let name = "llama_gqa_tied";
    let base = fixture_dir(name);
    let tensors = folder_tensors(&base);
    let refs: Vec<(&str, &HostTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let out = dir.path().join("out");
    write_model_folder(&base, &refs, SaveDtype::F32, &out).unwrap();
    // an earlier export is replaced
    write_model_folder(&base, &refs, SaveDtype::BF16, &out).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    // a folder holding something else is not touched
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let err = write_model_folder(&base, &refs, SaveDtype::F32, &other)
        .unwrap_err()
        .to_string();
    assert!(err.contains("other") && err.contains(MARKER), "{err}");
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);
    // nor the base itself
    let err = write_model_folder(&base, &refs, SaveDtype::F32, &base)
        .unwrap_err()
        .to_string();
    assert!(err.contains("base model"), "{err}");
    // a tensor missing or of the wrong shape: an error, nothing written
    let fresh = dir.path().join("fresh");
    let err = write_model_folder(&base, &refs[1..], SaveDtype::F32, &fresh)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing") && err.contains("config.json"),
        "{err}"
    );
    let wrong = HostTensor::new(vec![2, 2], vec![0.0; 4]);
    let mut bad = refs.clone();
    bad[0].1 = &wrong;
    let err = write_model_folder(&base, &bad, SaveDtype::F32, &fresh)
        .unwrap_err()
        .to_string();
    assert!(err.contains(bad[0].0), "{err}");
    assert!(!fresh.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn smollm2_exported_again_keeps_its_hyperparameters_and_tokenizer() {
    let Some(path) = crate::gguf::smollm2_path() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let imported = dir.path().join("smollm2");
    gguf::import(&path, &imported).unwrap();
    let out = dir.path().join("smollm2.gguf");
    let report = gguf::export(&imported, &out, GgmlType::F16).unwrap();
    assert_eq!(report.tokenizer.as_ref().unwrap().pre, "smollm");
    let (original, exported) = (
        GgufFile::open(&path).unwrap(),
        GgufFile::open(&out).unwrap(),
    );
    let mut compared = 0;
    for (key, value) in original.metadata().entries() {
        // general.* describes the file (name, license, file type); the import has no use for
        // add_space_prefix, which llama.cpp's byte-level vocabularies do not read.
        if key.starts_with("general.") || key == "tokenizer.ggml.add_space_prefix" {
            continue;
        }
        assert_eq!(exported.metadata().get(key), Some(value), "key `{key}`");
        compared += 1;
    }
    assert!(compared >= 20, "{compared} keys");
    assert_eq!(exported.tensors().len(), original.tensors().len());
    let embed = SafeTensors::open(&imported)
        .unwrap()
        .get("model.embed_tokens.weight")
        .unwrap();
    let got = exported.dequantize("token_embd.weight").unwrap();
    assert_eq!(got.shape, embed.shape);
    let want = rounded(&embed, GgmlType::F16);
    assert!(got
        .data
        .iter()
        .zip(&want)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

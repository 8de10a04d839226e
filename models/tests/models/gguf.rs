//! GGUF import: the reader and dequantization against llama.cpp's `gguf` package (fixtures from
//! tests/fixtures/gguf/make.py), names and the Q/K permutation, config, tokenizer and the whole
//! import of tiny Llama and Qwen2 files, SmolLM2 when present, and corrupt files.

use kiln_models::gguf::{self, GgmlType, GgufFile, MetadataValue};
use kiln_models::Error;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    crate::repo_root().join("tests/fixtures/gguf").join(name)
}

fn json(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn assert_bits_eq(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{name}[{i}]: {g} != {w}");
    }
}

#[test]
fn every_type_dequantizes_bit_for_bit_as_the_gguf_package() {
    let file = GgufFile::open(fixture("quants.gguf")).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_start() % 64, 0);
    let index = json("quants.json");
    let bytes = std::fs::read(fixture("quants.f32")).unwrap();
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let tensors = index["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), file.tensors().len());
    let mut types = std::collections::BTreeSet::new();
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let info = file.tensor(name).unwrap();
        assert_eq!(info.ggml_type.name(), t["type"].as_str().unwrap(), "{name}");
        assert_eq!(info.shape(), shape, "{name}");
        let got = file.dequantize(name).unwrap();
        assert_eq!(got.shape, shape);
        let start = t["offset"].as_u64().unwrap() as usize;
        let want = &values[start..start + got.len()];
        assert!(want.iter().any(|&v| v != 0.0), "{name}: a zero reference");
        assert_bits_eq(name, &got.data, want);
        types.insert(info.ggml_type);
    }
    for ty in gguf::DEQUANTIZABLE {
        assert!(types.contains(ty), "no fixture tensor of type {ty}");
    }
}

#[test]
fn metadata_of_every_value_type_reads_back() {
    let file = GgufFile::open(fixture("quants.gguf")).unwrap();
    let md = file.metadata();
    let want = json("quants.json");
    let want = want["metadata"].as_object().unwrap();
    assert_eq!(md.get("test.u8"), Some(&MetadataValue::U8(200)));
    assert_eq!(md.get("test.i8"), Some(&MetadataValue::I8(-100)));
    assert_eq!(md.get("test.u16"), Some(&MetadataValue::U16(60000)));
    assert_eq!(md.get("test.i16"), Some(&MetadataValue::I16(-30000)));
    assert_eq!(md.get("test.u32"), Some(&MetadataValue::U32(4_000_000_000)));
    assert_eq!(
        md.get("test.i32"),
        Some(&MetadataValue::I32(-2_000_000_000))
    );
    assert_eq!(md.get("test.f32"), Some(&MetadataValue::F32(0.15625)));
    assert_eq!(
        md.get("test.u64"),
        Some(&MetadataValue::U64(18_000_000_000_000_000_000))
    );
    assert_eq!(
        md.get("test.i64"),
        Some(&MetadataValue::I64(-9_000_000_000_000_000_000))
    );
    assert_eq!(
        md.get("test.f64"),
        Some(&MetadataValue::F64(want["test.f64"].as_f64().unwrap()))
    );
    assert_eq!(md.get_bool("test.bool").unwrap(), Some(true));
    assert_eq!(
        md.get_str("test.string").unwrap(),
        want["test.string"].as_str()
    );
    assert_eq!(
        md.get_i128_array("test.array_i32").unwrap(),
        Some(vec![1, -2, 3, -4])
    );
    assert_eq!(
        md.get_f64_array("test.array_f32").unwrap(),
        Some(vec![0.5, -1.25, 3.0])
    );
    assert_eq!(
        md.get_str_array("test.array_str").unwrap(),
        Some(vec!["a", "", "ü", "three words"])
    );
    assert_eq!(
        md.get("test.array_u8"),
        Some(&MetadataValue::Array(vec![
            MetadataValue::U8(0),
            MetadataValue::U8(255),
            MetadataValue::U8(7)
        ]))
    );
    let nested = md.get("test.array_nested").unwrap();
    let MetadataValue::Array(outer) = nested else {
        panic!("{nested:?}")
    };
    assert_eq!(outer.len(), 2);
    assert!(matches!(&outer[1], MetadataValue::Array(inner) if inner.len() == 1));
    // a wrong type names the file and key
    let err = md.get_str("test.u8").unwrap_err().to_string();
    assert!(
        err.contains("quants.gguf") && err.contains("test.u8"),
        "{err}"
    );
    assert_eq!(md.get_usize("absent").unwrap(), None);
}

/// A GGUF file built by hand, for the error cases.
struct Builder {
    kvs: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
    version: u32,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            kvs: vec![],
            n_kv: 0,
            infos: vec![],
            n_tensors: 0,
            data: vec![],
            version: 3,
        }
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    fn kv_u32(mut self, key: &str, v: u32) -> Builder {
        Self::string(&mut self.kvs, key);
        self.kvs.extend(4u32.to_le_bytes());
        self.kvs.extend(v.to_le_bytes());
        self.n_kv += 1;
        self
    }

    fn kv_raw(mut self, key: &str, ty: u32, payload: &[u8]) -> Builder {
        Self::string(&mut self.kvs, key);
        self.kvs.extend(ty.to_le_bytes());
        self.kvs.extend(payload);
        self.n_kv += 1;
        self
    }

    fn tensor(mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Builder {
        Self::string(&mut self.infos, name);
        self.infos.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(ty.to_le_bytes());
        self.infos.extend(offset.to_le_bytes());
        self.n_tensors += 1;
        self
    }

    fn data(mut self, bytes: &[u8]) -> Builder {
        self.data.extend(bytes);
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kvs);
        out.extend(&self.infos);
        while out.len() % 32 != 0 {
            out.push(0);
        }
        out.extend(&self.data);
        out
    }

    fn open(&self) -> Result<GgufFile, Error> {
        open_bytes(&self.bytes())
    }
}

fn open_bytes(bytes: &[u8]) -> Result<GgufFile, Error> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("case.gguf");
    std::fs::write(&path, bytes).unwrap();
    GgufFile::open(&path)
}

fn err_text(r: Result<GgufFile, Error>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn hand_built_file_reads() {
    let f32s: Vec<u8> = [1.5f32, -2.0, 0.25, 8.0, 3.0, -1.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let file = Builder::new()
        .kv_u32("general.alignment", 32)
        .tensor("t", &[3, 2], 0, 0)
        .data(&f32s)
        .open()
        .unwrap();
    let t = file.dequantize("t").unwrap();
    assert_eq!(t.shape, vec![2, 3]);
    assert_eq!(t.data, vec![1.5, -2.0, 0.25, 8.0, 3.0, -1.0]);
    let mut v2 = Builder::new().tensor("t", &[3, 2], 0, 0).data(&f32s);
    v2.version = 2;
    assert_eq!(v2.open().unwrap().version(), 2);
}

#[test]
fn corrupt_and_unsupported_files_are_errors_naming_file_and_place() {
    let f32x4 = [0u8; 16];
    // bad magic
    let mut bytes = Builder::new().bytes();
    bytes[0] = b'X';
    let e = err_text(open_bytes(&bytes));
    assert!(e.contains("case.gguf") && e.contains("magic"), "{e}");
    // versions
    let mut b = Builder::new();
    b.version = 1;
    assert!(err_text(b.open()).contains("version 1"));
    b.version = 7;
    assert!(err_text(b.open()).contains("version 7"));
    b.version = 3u32.swap_bytes();
    assert!(err_text(b.open()).contains("big-endian"));
    // truncated header
    let e = err_text(open_bytes(b"GGUF\x03\x00"));
    assert!(e.contains("truncated"), "{e}");
    // a huge tensor count or metadata count is refused before allocating
    let mut huge = Builder::new().bytes();
    huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err_text(open_bytes(&huge)).contains("tensor count"));
    let mut huge = Builder::new().bytes();
    huge[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(err_text(open_bytes(&huge)).contains("metadata count"));
    // a huge array count
    let mut payload = 0u32.to_le_bytes().to_vec();
    payload.extend((1u64 << 50).to_le_bytes());
    let e = err_text(Builder::new().kv_raw("big.array", 9, &payload).open());
    assert!(e.contains("big.array") && e.contains("does not fit"), "{e}");
    // a huge string length
    let e = err_text(
        Builder::new()
            .kv_raw("s", 8, &(u64::MAX - 3).to_le_bytes())
            .open(),
    );
    assert!(e.contains("key `s`"), "{e}");
    // unknown value type, bad bool, duplicate key, bad alignment
    assert!(err_text(Builder::new().kv_raw("k", 13, &[]).open()).contains("value type 13"));
    assert!(err_text(Builder::new().kv_raw("k", 7, &[2]).open()).contains("bool"));
    let e = err_text(Builder::new().kv_u32("k", 1).kv_u32("k", 2).open());
    assert!(e.contains("twice"), "{e}");
    let e = err_text(Builder::new().kv_u32("general.alignment", 24).open());
    assert!(e.contains("general.alignment"), "{e}");
    // tensor data past the end, misaligned, unknown type, too many dims, partial blocks
    let e = err_text(Builder::new().tensor("w", &[4], 0, 0).data(&[0; 8]).open());
    assert!(
        e.contains("tensor `w`") && e.contains("end of the file"),
        "{e}"
    );
    let e = err_text(Builder::new().tensor("w", &[4], 0, 64).data(&f32x4).open());
    assert!(
        e.contains("tensor `w`") && e.contains("end of the file"),
        "{e}"
    );
    let e = err_text(
        Builder::new()
            .tensor("w", &[4], 0, u64::MAX - 8)
            .data(&f32x4)
            .open(),
    );
    assert!(e.contains("tensor `w`"), "{e}");
    let e = err_text(Builder::new().tensor("w", &[2], 0, 4).data(&f32x4).open());
    assert!(e.contains("alignment"), "{e}");
    let e = err_text(Builder::new().tensor("w", &[4], 99, 0).data(&f32x4).open());
    assert!(e.contains("tensor `w`") && e.contains("99"), "{e}");
    let e = err_text(
        Builder::new()
            .tensor("w", &[1, 1, 1, 1, 1], 0, 0)
            .data(&f32x4)
            .open(),
    );
    assert!(e.contains("dimensions"), "{e}");
    let e = err_text(
        Builder::new()
            .tensor("w", &[16], 8, 0)
            .data(&[0; 64])
            .open(),
    );
    assert!(e.contains("blocks"), "{e}");
    let e = err_text(
        Builder::new()
            .tensor("w", &[u64::MAX, 4], 0, 0)
            .data(&f32x4)
            .open(),
    );
    assert!(e.contains("overflow"), "{e}");
    let e = err_text(
        Builder::new()
            .tensor("w", &[4], 0, 0)
            .tensor("w", &[4], 0, 0)
            .data(&f32x4)
            .open(),
    );
    assert!(e.contains("two tensors"), "{e}");
    // a type Kiln cannot dequantize: the file opens, dequantizing says which types work
    let file = Builder::new()
        .tensor("q2", &[256], GgmlType::Q2K.id(), 0)
        .data(&[0; 84])
        .open()
        .unwrap();
    let e = file.dequantize("q2").unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("tensor `q2`") && e.contains("Q2_K") && e.contains("Q4_K"),
        "{e}"
    );
    assert!(file.dequantize("nope").is_err());
}

#[test]
fn every_truncation_of_a_real_file_is_an_error() {
    let bytes = std::fs::read(fixture("quants.gguf")).unwrap();
    let data_start = GgufFile::open(fixture("quants.gguf")).unwrap().data_start() as usize;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    for len in (0..bytes.len()).filter(|&l| l <= data_start + 64 || l % 97 == 0) {
        std::fs::write(&path, &bytes[..len]).unwrap();
        let e = GgufFile::open(&path).expect_err("a truncated file opened");
        assert!(e.to_string().contains("cut.gguf"), "{e}");
    }
}

/// A small deterministic generator (xorshift64*), so the mutations are the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Everything the importer does with a file, short of writing it.
fn exercise(path: &Path) {
    if let Ok(file) = GgufFile::open(path) {
        for t in file.tensors() {
            let _ = file.dequantize_info(t);
        }
        let _ = gguf::GgufModelConfig::from_gguf(&file).map(|c| c.to_hf_json());
        let _ = gguf::build_tokenizer(&file);
    }
}

#[test]
fn random_header_mutations_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut errors = 0;
    let mut total = 0;
    for name in ["quants.gguf", "tiny-llama.gguf"] {
        let original = std::fs::read(fixture(name)).unwrap();
        let header_len = GgufFile::open(fixture(name)).unwrap().data_start() as usize;
        let path = dir.path().join(name);
        for case in 0..300 {
            let mut bytes = original.clone();
            for _ in 0..1 + rng.below(4) {
                // mostly in the first bytes (counts, the first keys), else anywhere in the header
                let at = if rng.below(2) == 0 {
                    rng.below(64.min(header_len))
                } else {
                    rng.below(header_len)
                };
                match rng.below(3) {
                    0 => bytes[at] = rng.next() as u8,
                    1 => bytes[at] ^= 1 << rng.below(8),
                    _ => bytes[at] = [0x00, 0xff, 0x7f, 0x80][rng.below(4)],
                }
            }
            std::fs::write(&path, &bytes).unwrap();
            let outcome = std::panic::catch_unwind(|| exercise(&path));
            assert!(outcome.is_ok(), "{name}: mutation {case} panicked");
            errors += usize::from(GgufFile::open(&path).is_err());
            total += 1;
        }
    }
    // the mutations did reach the checks
    assert!(
        errors > total / 4,
        "only {errors} of {total} mutations failed"
    );
}

fn read_safetensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (name, view.shape().to_vec(), values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Encodes each fixture string with the imported tokenizer.json and compares with the ids
/// transformers' GGUF tokenizer gave (no special tokens added). `roundtrip`: decoding gives the
/// text back (byte-level vocabularies; SentencePiece drops a leading space).
fn check_token_ids(tokenizer_json: &Path, expected: &serde_json::Value, roundtrip: bool) {
    let tok = tokenizers::Tokenizer::from_file(tokenizer_json).unwrap();
    let cases = expected["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, false).unwrap();
        assert_eq!(got.get_ids(), want.as_slice(), "{text:?}");
        if roundtrip {
            let decoded = tok.decode(&want, false).unwrap();
            assert_eq!(decoded, text, "decoding {text:?}");
        }
    }
}

/// The imported folder is what the crate's own loaders accept: the config reads, and the
/// safetensors hold exactly the parameters that config implies.
fn check_loads(out: &Path) {
    let config = kiln_models::ModelConfig::load(out).unwrap();
    let weights = kiln_models::weights::SafeTensors::open(out.join("model.safetensors")).unwrap();
    weights.check(&config.parameters()).unwrap();
}

fn import_tiny(arch: &str) -> (tempfile::TempDir, PathBuf, gguf::ImportReport) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    let report = gguf::import(fixture(&format!("tiny-{arch}.gguf")), &out).unwrap();
    (dir, out, report)
}

#[test]
fn tiny_llama_and_qwen2_import_to_the_expected_hugging_face_tensors() {
    for arch in ["llama", "qwen2"] {
        let (_dir, out, report) = import_tiny(arch);
        assert_eq!(report.architecture, arch);
        let got = read_safetensors(&out.join("model.safetensors"));
        let want = read_safetensors(&fixture(&format!("tiny-{arch}.expected.safetensors")));
        let names = |v: &[(String, Vec<usize>, Vec<f32>)]| -> Vec<String> {
            v.iter().map(|t| t.0.clone()).collect()
        };
        assert_eq!(names(&got), names(&want), "{arch}: tensor names");
        assert_eq!(report.tensors, want.len());
        check_loads(&out);
        for ((name, shape, values), (_, want_shape, want_values)) in got.iter().zip(&want) {
            assert_eq!(shape, want_shape, "{arch}: {name}");
            assert_bits_eq(&format!("{arch}: {name}"), values, want_values);
        }
        // the permutation was really there to undo: the raw GGUF rows differ from HF's
        let file = GgufFile::open(fixture(&format!("tiny-{arch}.gguf"))).unwrap();
        let raw = file.dequantize("blk.1.attn_q.weight").unwrap();
        let hf = &want
            .iter()
            .find(|t| t.0 == "model.layers.1.self_attn.q_proj.weight")
            .unwrap()
            .2;
        assert_eq!(arch == "llama", &raw.data != hf, "{arch}: q rows permuted");
    }
}

#[test]
fn tiny_configs_and_tokenizer_files_describe_the_model() {
    for arch in ["llama", "qwen2"] {
        let (_dir, out, report) = import_tiny(arch);
        let c = read_json(&out.join("config.json"));
        let class = if arch == "llama" {
            "LlamaForCausalLM"
        } else {
            "Qwen2ForCausalLM"
        };
        assert_eq!(c["model_type"], arch);
        assert_eq!(c["architectures"][0], class);
        assert_eq!(c["hidden_size"], 64);
        assert_eq!(c["intermediate_size"], 96);
        assert_eq!(c["num_hidden_layers"], 2);
        assert_eq!(c["num_attention_heads"], 4);
        assert_eq!(c["num_key_value_heads"], 2);
        assert_eq!(c["head_dim"], 16);
        assert_eq!(c["max_position_embeddings"], 256);
        assert_eq!(c["vocab_size"], report.tokenizer.1);
        assert_eq!(c["torch_dtype"], "float32");
        assert_eq!(c["bos_token_id"], 1);
        assert_eq!(c["eos_token_id"], 2);
        let (theta, eps, tied) = if arch == "llama" {
            (500000.0, 1e-5, false)
        } else {
            (1000000.0, 1e-6, true)
        };
        assert_eq!(c["rope_theta"].as_f64(), Some(theta));
        assert_eq!(
            c["rms_norm_eps"].as_f64(),
            Some(eps),
            "the f32's shortest decimal"
        );
        assert_eq!(c["tie_word_embeddings"], tied);
        if arch == "llama" {
            assert_eq!(c["attention_bias"], false);
        }

        let tc = read_json(&out.join("tokenizer_config.json"));
        assert_eq!(tc["bos_token"], "<|im_start|>");
        assert_eq!(tc["eos_token"], "<|im_end|>");
        assert_eq!(tc["pad_token"], "<|endoftext|>");
        assert_eq!(tc["add_bos_token"], false);
        assert!(tc["chat_template"]
            .as_str()
            .unwrap()
            .contains("<|im_start|>"));
        let g = read_json(&out.join("generation_config.json"));
        assert_eq!(
            (g["bos_token_id"].clone(), g["eos_token_id"].clone()),
            (1.into(), 2.into())
        );

        let expected = json(&format!("tiny-{arch}.tokens.json"));
        check_token_ids(&out.join("tokenizer.json"), &expected, true);
        // the special tokens are whole tokens
        let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
        let ids = tok.encode("<|im_start|>hi<|im_end|>", false).unwrap();
        assert_eq!(ids.get_ids().first(), Some(&1));
        assert_eq!(ids.get_ids().last(), Some(&2));
    }
}

#[test]
fn hugging_face_names_and_the_qk_permutation() {
    let cases = [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
        (
            "blk.0.attn_q.weight",
            "model.layers.0.self_attn.q_proj.weight",
        ),
        (
            "blk.11.attn_k.bias",
            "model.layers.11.self_attn.k_proj.bias",
        ),
        (
            "blk.2.attn_v.weight",
            "model.layers.2.self_attn.v_proj.weight",
        ),
        (
            "blk.2.attn_output.weight",
            "model.layers.2.self_attn.o_proj.weight",
        ),
        (
            "blk.3.ffn_gate.weight",
            "model.layers.3.mlp.gate_proj.weight",
        ),
        ("blk.3.ffn_up.weight", "model.layers.3.mlp.up_proj.weight"),
        (
            "blk.3.ffn_down.weight",
            "model.layers.3.mlp.down_proj.weight",
        ),
        (
            "blk.4.attn_norm.weight",
            "model.layers.4.input_layernorm.weight",
        ),
        (
            "blk.4.ffn_norm.weight",
            "model.layers.4.post_attention_layernorm.weight",
        ),
    ];
    for (g, hf) in cases {
        assert_eq!(gguf::hf_name(g).unwrap().name, hf);
    }
    for bad in [
        "blk.x.attn_q.weight",
        "blk..attn_q.weight",
        "blk.0.attn_q.scale",
        "rope_freqs.weight",
        "blk.0.ffn_gate_exps.weight",
    ] {
        assert!(gguf::hf_name(bad).is_none(), "{bad}");
    }
    assert_eq!(
        gguf::hf_name("blk.0.attn_q.weight").unwrap().qk,
        Some(gguf::QkRole::Query)
    );
    assert_eq!(
        gguf::hf_name("blk.0.attn_k.bias").unwrap().qk,
        Some(gguf::QkRole::Key)
    );

    // convert_hf_to_gguf.py's permutation written out: HF row h*d + j*d/2 + i goes to GGUF row
    // h*d + 2i + j; undoing it restores every row.
    let (heads, d, cols) = (3, 8, 5);
    let hf: Vec<f32> = (0..heads * d * cols)
        .map(|v| v as f32 * 0.5 - 7.0)
        .collect();
    let mut permuted = vec![0.0; hf.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..d / 2 {
                let from = h * d + j * d / 2 + i;
                let to = h * d + 2 * i + j;
                permuted[to * cols..(to + 1) * cols]
                    .copy_from_slice(&hf[from * cols..(from + 1) * cols]);
            }
        }
    }
    let t = kiln_models::HostTensor::new(vec![heads * d, cols], permuted);
    let back = gguf::unpermute_qk(&t, heads, "t").unwrap();
    assert_eq!(back.data, hf);
    let bias =
        kiln_models::HostTensor::new(vec![heads * d], (0..heads * d).map(|v| v as f32).collect());
    assert_eq!(
        gguf::unpermute_qk(&bias, heads, "b").unwrap().data[..4],
        [0.0, 2.0, 4.0, 6.0]
    );
    assert!(gguf::unpermute_qk(&t, 5, "t")
        .unwrap_err()
        .to_string()
        .contains("heads"));
}

#[test]
fn import_replaces_only_earlier_imports_and_leaves_nothing_behind_on_failure() {
    let (dir, out, _) = import_tiny("llama");
    // again over the earlier import
    let report = gguf::import(fixture("tiny-qwen2.gguf"), &out).unwrap();
    assert!(report.replaced);
    assert_eq!(read_json(&out.join("config.json"))["model_type"], "qwen2");
    // a folder with other files is refused and left alone
    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let e = gguf::import(fixture("tiny-llama.gguf"), &foreign)
        .unwrap_err()
        .to_string();
    assert!(e.contains("refusing"), "{e}");
    assert_eq!(
        std::fs::read_to_string(foreign.join("notes.txt")).unwrap(),
        "mine"
    );
    // an empty folder is fine
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    gguf::import(fixture("tiny-llama.gguf"), &empty).unwrap();
    // a file that is not a model: an error, and no folder or temporary left
    let failed = dir.path().join("failed");
    let e = gguf::import(fixture("quants.gguf"), &failed).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("kiln-test"), "{e}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!failed.exists());
}

pub fn smollm2_path() -> Option<PathBuf> {
    let path = match std::env::var_os("KILN_SMOLLM2_GGUF") {
        Some(p) => PathBuf::from(p),
        None => {
            let dir = match std::env::var_os("KILN_MODELS_DIR") {
                Some(d) => PathBuf::from(d),
                None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/kiln-models"),
            };
            dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    if path.is_file() {
        Some(path)
    } else {
        println!("skipped: SmolLM2 GGUF not present (scripts/fetch-smollm2)");
        None
    }
}

#[test]
fn smollm2_dequantizes_bit_for_bit_and_imports() {
    use sha2::Digest;
    let Some(path) = smollm2_path() else { return };
    let file = GgufFile::open(&path).unwrap();
    let digests = json("smollm2_digests.json");
    let digests = digests["tensors"].as_object().unwrap();
    assert_eq!(file.tensors().len(), digests.len());
    for t in file.tensors() {
        let want = &digests[&t.name];
        assert_eq!(
            t.ggml_type.name(),
            want["type"].as_str().unwrap(),
            "{}",
            t.name
        );
        let got = file.dequantize_info(t).unwrap();
        let shape: Vec<usize> = want["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(got.shape, shape, "{}", t.name);
        let mut h = sha2::Sha256::new();
        for v in &got.data {
            h.update(v.to_le_bytes());
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, want["sha256"].as_str().unwrap(), "{}", t.name);
    }

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2");
    let start = std::time::Instant::now();
    let report = gguf::import(&path, &out).unwrap();
    println!(
        "SmolLM2 import: {:.2} s, {} tensors {:?}",
        start.elapsed().as_secs_f64(),
        report.tensors,
        report.tensor_types
    );
    let c = read_json(&out.join("config.json"));
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["hidden_size"], 576);
    assert_eq!(c["num_hidden_layers"], 30);
    assert_eq!(c["num_attention_heads"], 9);
    assert_eq!(c["num_key_value_heads"], 3);
    assert_eq!(c["head_dim"], 64);
    assert_eq!(c["vocab_size"], 49152);
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["rms_norm_eps"].as_f64(), Some(1e-5));
    assert_eq!(c["rope_theta"].as_f64(), Some(100000.0));
    let weights = read_safetensors(&out.join("model.safetensors"));
    assert_eq!(weights.len(), 272);
    assert!(weights.iter().all(|t| t.0 != "lm_head.weight"));
    check_loads(&out);
    check_token_ids(
        &out.join("tokenizer.json"),
        &json("smollm2_tokens.json"),
        true,
    );
}

#[test]
fn a_sentencepiece_vocabulary_imports_with_byte_fallback_and_derived_merges() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("spm");
    let report = gguf::import(fixture("tiny-spm.gguf"), &out).unwrap();
    assert_eq!(report.tokenizer, ("llama".to_string(), 400));
    check_loads(&out);
    let tj = read_json(&out.join("tokenizer.json"));
    assert_eq!(tj["model"]["byte_fallback"], true);
    assert!(!tj["model"]["merges"].as_array().unwrap().is_empty());
    check_token_ids(
        &out.join("tokenizer.json"),
        &json("tiny-spm.tokens.json"),
        false,
    );
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(
        tc["add_bos_token"], true,
        "llama.cpp's default for SentencePiece"
    );
    assert_eq!(tc["bos_token"], "<s>");
    // with special tokens, BOS comes first
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    assert_eq!(tok.encode("hi", true).unwrap().get_ids()[0], 1);
    // a character outside the vocabulary falls back to its bytes
    let ids = tok.encode("Ж", false).unwrap();
    let pieces: Vec<&str> = ids
        .get_ids()
        .iter()
        .map(|&i| tok.id_to_token(i).unwrap())
        .map(|s| Box::leak(s.into_boxed_str()) as &str)
        .collect();
    assert!(pieces.iter().any(|p| p.starts_with("<0x")), "{pieces:?}");
    assert_eq!(tok.decode(ids.get_ids(), false).unwrap(), "Ж");
}

/// `fixture`'s bytes with every `from` replaced by `to` (same length), opened.
fn patched(fixture_name: &str, from: &[u8], to: &[u8]) -> (tempfile::TempDir, PathBuf) {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(fixture(fixture_name)).unwrap();
    let mut hits = 0;
    for i in 0..bytes.len() - from.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            hits += 1;
        }
    }
    assert!(hits > 0, "{from:?} not in {fixture_name}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(fixture_name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

#[test]
fn unsupported_tokenizers_and_architectures_say_what_is_supported() {
    // (fixture, bytes replaced, replacement, what the error names)
    type Case = (
        &'static str,
        &'static [u8],
        &'static [u8],
        &'static [&'static str],
    );
    let cases: [Case; 4] = [
        (
            "tiny-llama.gguf",
            b"llama-bpe",
            b"falcon-xx",
            &["tokenizer.ggml.pre", "falcon-xx", "smollm"],
        ),
        (
            "tiny-llama.gguf",
            b"gpt2",
            b"bert",
            &["tokenizer.ggml.model", "bert", "gpt2 and llama"],
        ),
        (
            "tiny-qwen2.gguf",
            b"qwen2",
            b"gemma",
            &["general.architecture", "gemma", "llama and qwen2"],
        ),
        (
            "tiny-llama.gguf",
            b"blk.1.ffn_up",
            b"blk.1.ffn_xx",
            &["blk.1.ffn_xx.weight", "LlamaForCausalLM"],
        ),
    ];
    for (name, from, to, needles) in cases {
        let (dir, path) = patched(name, from, to);
        let e = gguf::import(&path, dir.path().join("out")).unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
        let e = e.to_string();
        for needle in needles.iter().chain([&name]) {
            assert!(e.contains(needle), "{e} lacks {needle}");
        }
        assert!(!dir.path().join("out").exists());
    }
}

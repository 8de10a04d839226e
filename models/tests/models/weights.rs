//! Safetensors: round trips, hand-built files with known bit patterns, sharded folders, checks
//! against a config's parameter list, and corrupt files (random header mutations, truncation)
//! that must give errors naming the file, never panics.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_models::weights::{save, Dtype, SafeTensors, SaveDtype};
use kiln_models::{Error, HostTensor, ModelConfig};

/// xorshift64*: a small seeded generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in [-2, 2), never exactly zero.
    fn value(&mut self) -> f32 {
        let x = (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0;
        if x == 0.0 {
            0.5
        } else {
            x
        }
    }

    fn tensor(&mut self, shape: &[usize]) -> HostTensor {
        let n = shape.iter().product();
        HostTensor::new(shape.to_vec(), (0..n).map(|_| self.value()).collect())
    }
}

fn no_metadata() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// A tiny Qwen2 (biases) or Llama config.
fn tiny_config(model_type: &str, tied: bool) -> ModelConfig {
    let text = format!(
        r#"{{"model_type": "{model_type}", "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 16, "max_position_embeddings": 64, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": {tied}}}"#
    );
    ModelConfig::from_json_str(&text, "tiny/config.json").unwrap()
}

/// Random tensors for every parameter of `config`.
fn model_tensors(config: &ModelConfig, rng: &mut Rng) -> Vec<(String, HostTensor)> {
    config
        .parameters()
        .into_iter()
        .map(|(name, shape)| {
            let t = rng.tensor(&shape);
            (name, t)
        })
        .collect()
}

fn save_all(path: &Path, tensors: &[(String, HostTensor)], dtype: SaveDtype) {
    let refs: Vec<(&str, &HostTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save(path, &refs, dtype, &no_metadata()).unwrap();
}

/// The message of an error, which must name `path`.
fn names_file(err: Error, path: &Path) -> String {
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "error does not name {}: {message}",
        path.display()
    );
    message
}

/// bfloat16 rounding to nearest, ties to even, done on the bits (finite inputs).
fn bf16_reference(x: f32) -> f32 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) & 0xFFFF_0000;
    f32::from_bits(rounded)
}

/// A safetensors file written byte by byte: `tensors` are (name, dtype, shape, data bytes).
fn raw_file(tensors: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
    let mut header = String::from("{");
    let mut offset = 0;
    for (i, (name, dtype, shape, data)) in tensors.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            r#""{name}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{offset},{}]}}"#,
            offset + data.len()
        ));
        offset += data.len();
    }
    header.push('}');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    for (_, _, _, data) in tensors {
        bytes.extend(data);
    }
    bytes
}

#[test]
fn f32_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(1);
    let tensors = vec![
        ("a.weight".to_string(), rng.tensor(&[3, 5])),
        ("b".to_string(), rng.tensor(&[7])),
        ("c.scalar".to_string(), rng.tensor(&[])),
        ("d".to_string(), rng.tensor(&[2, 3, 4])),
    ];
    let refs: Vec<(&str, &HostTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let metadata = BTreeMap::from([("step".to_string(), "42".to_string())]);
    save(
        dir.path().join("model.safetensors"),
        &refs,
        SaveDtype::F32,
        &metadata,
    )
    .unwrap();

    let st = SafeTensors::open(dir.path()).unwrap();
    assert_eq!(st.len(), 4);
    assert_eq!(
        st.names().collect::<Vec<_>>(),
        ["a.weight", "b", "c.scalar", "d"]
    );
    for (name, tensor) in &tensors {
        assert_eq!(&st.get(name).unwrap(), tensor, "{name}");
        let info = st.info(name).unwrap();
        assert_eq!(info.dtype, Dtype::F32);
        assert_eq!(info.shape, tensor.shape.as_slice());
    }
    let metadata = st.metadata();
    assert_eq!(metadata.get("step").map(String::as_str), Some("42"));
    assert_eq!(metadata.get("format").map(String::as_str), Some("pt"));
    let missing = st.get("nope").unwrap_err().to_string();
    assert!(missing.contains("nope"), "{missing}");
}

#[test]
fn bf16_save_rounds_to_nearest_even() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(2);
    let mut t = rng.tensor(&[64, 33]);
    // Exact ties: the lower 16 bits are 0x8000; they round to the even neighbour.
    t.data[0] = f32::from_bits(0x3F80_8000);
    t.data[1] = f32::from_bits(0x3F81_8000);
    let path = dir.path().join("w.safetensors");
    save(&path, &[("t", &t)], SaveDtype::BF16, &no_metadata()).unwrap();
    let st = SafeTensors::open(&path).unwrap();
    assert_eq!(st.info("t").unwrap().dtype, Dtype::BF16);
    let back = st.get("t").unwrap();
    assert_eq!(back.shape, t.shape);
    for (i, (&x, &y)) in t.data.iter().zip(&back.data).enumerate() {
        assert_eq!(y.to_bits(), bf16_reference(x).to_bits(), "element {i}: {x}");
    }
    assert_eq!(back.data[0].to_bits(), 0x3F80_0000);
    assert_eq!(back.data[1].to_bits(), 0x3F82_0000);
}

#[test]
fn hand_built_file_with_known_bit_patterns() {
    let f16: Vec<u8> = [0x3C00u16, 0xC000, 0x7BFF, 0x0001, 0x3555, 0x8000]
        .iter()
        .flat_map(|b| b.to_le_bytes())
        .collect();
    let bf16: Vec<u8> = [0x3F80u16, 0xC049, 0x0080, 0x4780]
        .iter()
        .flat_map(|b| b.to_le_bytes())
        .collect();
    let f32s: Vec<u8> = [1.5f32, -0.25]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let bytes = raw_file(&[
        ("half", "F16", &[2, 3], f16),
        ("brain", "BF16", &[4], bf16),
        ("single", "F32", &[1, 2], f32s),
        ("ints", "I64", &[1], 7i64.to_le_bytes().to_vec()),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hand.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let st = SafeTensors::open(&path).unwrap();

    let half = st.get("half").unwrap();
    assert_eq!(half.shape, vec![2, 3]);
    assert_eq!(
        half.data,
        vec![1.0, -2.0, 65504.0, 2f32.powi(-24), 0.333_251_95, -0.0]
    );
    assert!(half.data[5].is_sign_negative());
    assert_eq!(
        st.get("brain").unwrap().data,
        vec![1.0, -3.140625, 2f32.powi(-126), 65536.0]
    );
    assert_eq!(st.get("single").unwrap().data, vec![1.5, -0.25]);

    let err = st.get("ints").unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    let message = names_file(err, &path);
    assert!(
        message.contains("I64") && message.contains("`ints`"),
        "{message}"
    );
}

#[test]
fn sharded_folder_reads_every_shard() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config("qwen2", false);
    let tensors = model_tensors(&config, &mut Rng(3));
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let shard_names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    save_all(&dir.path().join(shard_names[0]), first, SaveDtype::F32);
    save_all(&dir.path().join(shard_names[1]), second, SaveDtype::BF16);
    let mut weight_map = serde_json::Map::new();
    for (name, _) in first {
        weight_map.insert(name.clone(), shard_names[0].into());
    }
    for (name, _) in second {
        weight_map.insert(name.clone(), shard_names[1].into());
    }
    let index = serde_json::json!({"metadata": {"total_size": 1}, "weight_map": weight_map});
    let index_path = dir.path().join("model.safetensors.index.json");
    std::fs::write(&index_path, index.to_string()).unwrap();

    for st in [
        SafeTensors::open(dir.path()).unwrap(),
        SafeTensors::open(&index_path).unwrap(),
    ] {
        assert_eq!(st.len(), tensors.len());
        st.check(&config.parameters()).unwrap();
        for (name, tensor) in first {
            assert_eq!(&st.get(name).unwrap(), tensor);
            assert!(st.info(name).unwrap().file.ends_with(shard_names[0]));
        }
        for (name, tensor) in second {
            let back = st.get(name).unwrap();
            let expected: Vec<f32> = tensor.data.iter().map(|&x| bf16_reference(x)).collect();
            assert_eq!(back.data, expected, "{name}");
            assert!(st.info(name).unwrap().file.ends_with(shard_names[1]));
        }
    }

    // The index puts a tensor in the wrong shard.
    let moved = &first[0].0;
    let mut wrong = index.clone();
    wrong["weight_map"][moved] = shard_names[1].into();
    std::fs::write(&index_path, wrong.to_string()).unwrap();
    let message = names_file(SafeTensors::open(dir.path()).unwrap_err(), &index_path);
    assert!(message.contains(moved.as_str()), "{message}");

    // A shard that is not there.
    let mut absent = index.clone();
    absent["weight_map"][moved] = "model-00003-of-00002.safetensors".into();
    std::fs::write(&index_path, absent.to_string()).unwrap();
    let err = SafeTensors::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("model-00003-of-00002"), "{err}");

    // A file name that leaves the folder.
    let mut escape = index.clone();
    escape["weight_map"][moved] = "../elsewhere.safetensors".into();
    std::fs::write(&index_path, escape.to_string()).unwrap();
    let message = names_file(SafeTensors::open(dir.path()).unwrap_err(), &index_path);
    assert!(message.contains("elsewhere"), "{message}");

    // The same tensor in both shards.
    save_all(
        &dir.path().join(shard_names[1]),
        &tensors[..1],
        SaveDtype::F32,
    );
    let mut twice = serde_json::Map::new();
    twice.insert(tensors[0].0.clone(), shard_names[0].into());
    std::fs::write(
        &index_path,
        serde_json::json!({"weight_map": twice}).to_string(),
    )
    .unwrap();
    // Only the listed shard is opened, so a second copy elsewhere is not seen...
    assert!(SafeTensors::open(dir.path()).is_ok());
    // ...but two listed shards holding one name is an error.
    twice.insert(tensors[1].0.clone(), shard_names[1].into());
    std::fs::write(
        &index_path,
        serde_json::json!({"weight_map": twice}).to_string(),
    )
    .unwrap();
    let message = SafeTensors::open(dir.path()).unwrap_err().to_string();
    assert!(
        message.contains(tensors[0].0.as_str()) && message.contains("also in"),
        "{message}"
    );

    // Malformed indexes.
    for text in [
        "{",
        "[]",
        r#"{"weight_map": 3}"#,
        r#"{"weight_map": {}}"#,
        r#"{"weight_map": {"a": 1}}"#,
    ] {
        std::fs::write(&index_path, text).unwrap();
        let err = SafeTensors::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "{text}: {err:?}");
        names_file(err, &index_path);
    }
}

#[test]
fn check_against_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(4);
    for (model_type, tied) in [("qwen2", false), ("llama", true)] {
        let config = tiny_config(model_type, tied);
        let tensors = model_tensors(&config, &mut rng);
        let path = dir.path().join(format!("{model_type}.safetensors"));
        save_all(&path, &tensors, SaveDtype::BF16);
        SafeTensors::open(&path)
            .unwrap()
            .check(&config.parameters())
            .unwrap();

        // One missing.
        let gone = &tensors[5].0;
        let fewer: Vec<_> = tensors.iter().filter(|(n, _)| n != gone).cloned().collect();
        save_all(&path, &fewer, SaveDtype::F32);
        let message = names_file(
            SafeTensors::open(&path)
                .unwrap()
                .check(&config.parameters())
                .unwrap_err(),
            &path,
        );
        assert!(
            message.contains(gone.as_str()) && message.contains("missing"),
            "{message}"
        );

        // One misshaped.
        let mut misshaped = tensors.clone();
        misshaped[2].1 = rng.tensor(&[misshaped[2].1.len()]);
        save_all(&path, &misshaped, SaveDtype::F32);
        let message = names_file(
            SafeTensors::open(&path)
                .unwrap()
                .check(&config.parameters())
                .unwrap_err(),
            &path,
        );
        assert!(
            message.contains(misshaped[2].0.as_str()) && message.contains("shape"),
            "{message}"
        );

        // Extras: listed, a few at most.
        let mut more = tensors.clone();
        for i in 0..8 {
            more.push((format!("extra.{i}"), rng.tensor(&[2])));
        }
        save_all(&path, &more, SaveDtype::F32);
        let message = names_file(
            SafeTensors::open(&path)
                .unwrap()
                .check(&config.parameters())
                .unwrap_err(),
            &path,
        );
        assert!(
            message.contains("8 tensors") && message.contains("`extra.0`"),
            "{message}"
        );
        assert!(message.contains("and 3 more"), "{message}");
    }

    // A tied model's file may also hold lm_head.weight of the embedding's shape, nothing else.
    let config = tiny_config("llama", true);
    let mut tensors = model_tensors(&config, &mut rng);
    let path = dir.path().join("tied.safetensors");
    tensors.push(("lm_head.weight".to_string(), rng.tensor(&[16, 8])));
    save_all(&path, &tensors, SaveDtype::F32);
    SafeTensors::open(&path)
        .unwrap()
        .check(&config.parameters())
        .unwrap();
    tensors.last_mut().unwrap().1 = rng.tensor(&[16, 4]);
    save_all(&path, &tensors, SaveDtype::F32);
    let message = SafeTensors::open(&path)
        .unwrap()
        .check(&config.parameters())
        .unwrap_err()
        .to_string();
    assert!(message.contains("lm_head.weight"), "{message}");
    // An untied model needs it.
    let untied = tiny_config("llama", false);
    tensors.pop();
    save_all(&path, &tensors, SaveDtype::F32);
    let message = SafeTensors::open(&path)
        .unwrap()
        .check(&untied.parameters())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("lm_head.weight") && message.contains("missing"),
        "{message}"
    );

    // A dtype that cannot be read is caught by the check, not later.
    let bytes = raw_file(&[("model.norm.weight", "I32", &[8], vec![1; 32])]);
    let path = dir.path().join("ints.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let err = SafeTensors::open(&path)
        .unwrap()
        .check(&[("model.norm.weight".to_string(), vec![8])])
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    assert!(names_file(err, &path).contains("I32"));
}

#[test]
fn bad_headers_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let good = raw_file(&[("x", "F32", &[2], vec![0, 0, 128, 63, 0, 0, 0, 64])]);
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("short length", vec![1, 2, 3]),
        ("length past the file", {
            let mut b = good.clone();
            b[..8].copy_from_slice(&(good.len() as u64).to_le_bytes());
            b
        }),
        ("huge length", {
            let mut b = good.clone();
            b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
        ("bad JSON", {
            let mut b = good.clone();
            b[8] = b'[';
            b
        }),
        ("not UTF-8", {
            let mut b = good.clone();
            b[9] = 0xFF;
            b
        }),
        ("data missing", good[..good.len() - 1].to_vec()),
        ("data too long", [good.clone(), vec![0]].concat()),
    ];
    let offsets_past = raw_file(&[("x", "F32", &[2], vec![0; 8])]);
    let text = String::from_utf8_lossy(&offsets_past[8..8 + header_len]).replace("[0,8]", "[0,9]");
    let mut b = (text.len() as u64).to_le_bytes().to_vec();
    b.extend(text.as_bytes());
    b.extend([0; 8]);
    cases.push(("offset out of range", b));
    let overflow = r#"{"x":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,8]}}"#;
    let mut b = (overflow.len() as u64).to_le_bytes().to_vec();
    b.extend(overflow.as_bytes());
    b.extend([0; 8]);
    cases.push(("shape overflow", b));

    for (what, bytes) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let err = SafeTensors::open(&path).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "{what}: {err:?}");
        names_file(err, &path);
    }

    let empty_dir = tempfile::tempdir().unwrap();
    let message = names_file(
        SafeTensors::open(empty_dir.path()).unwrap_err(),
        empty_dir.path(),
    );
    assert!(message.contains("model.safetensors"), "{message}");
}

/// A few hundred random mutations of the header bytes of real files: each opens to an error or
/// to a checkpoint whose every tensor reads (or errors) without a panic.
#[test]
fn mutated_headers_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x5EED);
    let config = tiny_config("qwen2", false);
    let tensors = model_tensors(&config, &mut rng);
    let original_path = dir.path().join("original.safetensors");
    save_all(&original_path, &tensors[..6], SaveDtype::BF16);
    let original = std::fs::read(&original_path).unwrap();
    let header_end = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let alphabet = b"{}[]\",:0123456789-eE.FBI";

    let path = dir.path().join("mutated.safetensors");
    let (mut opened, mut refused) = (0, 0);
    for case in 0..400 {
        let mut bytes = original.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(header_end);
            bytes[at] = match rng.below(3) {
                0 => rng.next() as u8,
                1 => alphabet[rng.below(alphabet.len())],
                _ => bytes[at] ^ (1 << rng.below(8)),
            };
        }
        std::fs::write(&path, &bytes).unwrap();
        match SafeTensors::open(&path) {
            Ok(st) => {
                opened += 1;
                let _ = st.check(&config.parameters());
                let names: Vec<String> = st.names().map(str::to_string).collect();
                for name in names {
                    if let Ok(t) = st.get(&name) {
                        assert_eq!(
                            t.data.len(),
                            t.shape.iter().product::<usize>(),
                            "case {case}"
                        );
                    }
                }
            }
            Err(err) => {
                refused += 1;
                names_file(err, &path);
            }
        }
    }
    // Both outcomes happen: the mutations are neither all harmless nor all fatal.
    assert!(
        opened > 0 && refused > 100,
        "opened {opened}, refused {refused}"
    );
}

#[test]
fn truncated_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(6);
    let original_path = dir.path().join("original.safetensors");
    let tensors = vec![
        ("a".to_string(), rng.tensor(&[4, 4])),
        ("b".to_string(), rng.tensor(&[3])),
    ];
    save_all(&original_path, &tensors, SaveDtype::F32);
    let original = std::fs::read(&original_path).unwrap();
    let path = dir.path().join("truncated.safetensors");
    for len in 0..original.len() {
        std::fs::write(&path, &original[..len]).unwrap();
        let err = SafeTensors::open(&path).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "length {len}: {err:?}");
        names_file(err, &path);
    }
}

#[test]
fn save_is_atomic_and_checks_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let mut rng = Rng(7);
    let old = rng.tensor(&[5, 2]);
    save(&path, &[("w", &old)], SaveDtype::F32, &no_metadata()).unwrap();
    let open_before = SafeTensors::open(&path).unwrap();

    let new = rng.tensor(&[5, 2]);
    save(&path, &[("w", &new)], SaveDtype::F32, &no_metadata()).unwrap();
    // The old mapping still reads the old file; a new open reads the new one.
    assert_eq!(open_before.get("w").unwrap(), old);
    assert_eq!(SafeTensors::open(&path).unwrap().get("w").unwrap(), new);
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        entries,
        ["model.safetensors"],
        "temporary files left behind"
    );

    let err = save(
        &path,
        &[("w", &old), ("w", &new)],
        SaveDtype::F32,
        &no_metadata(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
    let bad = HostTensor {
        shape: vec![3],
        data: vec![1.0],
    };
    assert!(save(&path, &[("bad", &bad)], SaveDtype::F32, &no_metadata()).is_err());
    let err = save(
        dir.path().join("no/such/dir/x.safetensors"),
        &[("w", &old)],
        SaveDtype::F32,
        &no_metadata(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    // A failed save leaves the existing file as it was.
    assert_eq!(SafeTensors::open(&path).unwrap().get("w").unwrap(), new);
}

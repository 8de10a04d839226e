//! GGUF import: the reader and dequantization against llama.cpp's `gguf` package (fixtures from
//! tests/fixtures/gguf/make.py), names and the Q/K permutation, config, tokenizer and the whole
//! import of tiny Llama and Qwen2 files, SmolLM2 when present, and corrupt files.

use kiln_models::gguf::{self, GgmlType, GgufFile, MetadataValue};
use kiln_models::Error;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/gguf")
        .join(name)
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

//! [`write`]: a GGUF v3 file (little-endian) from metadata pairs and tensors, laid out as
//! [`super::GgufFile`] reads it and as llama.cpp's `gguf.GGUFWriter` writes it: magic, version,
//! counts, the metadata pairs in the order given, the tensor infos (dimensions fastest first,
//! offsets from the start of the data section), zeros up to the alignment, then each tensor's
//! data followed by zeros up to the next multiple of the alignment.
//!
//! The alignment is `general.alignment` when the metadata has it (a power-of-two uint32), 32
//! otherwise. Everything is checked before the file is created; the file is written under a
//! temporary name in its folder, synced and renamed into place, so a reader never sees half of
//! one and a failure leaves nothing behind.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::metadata::MetadataValue;
use super::quantize::{self, QuantizeError};
use super::reader::DEFAULT_ALIGNMENT;
use super::types::GgmlType;
use crate::{Error, Result};

/// The version written.
pub const VERSION: u32 = 3;
/// llama.cpp's limit on tensor names (`GGML_MAX_NAME`, with the terminating NUL).
const MAX_NAME: usize = 64;

/// Where a tensor's bytes come from.
#[derive(Clone, Copy, Debug)]
pub enum TensorData<'a> {
    /// f32 values (row-major), encoded to the tensor's type as the file is written (one
    /// tensor's bytes in memory at a time).
    F32(&'a [f32]),
    /// Bytes already in the tensor's type (any type, quantized ones included).
    Raw(&'a [u8]),
}

/// One tensor to write.
#[derive(Clone, Debug)]
pub struct WriteTensor<'a> {
    /// The llama.cpp name (`blk.0.attn_q.weight`), shorter than 64 bytes.
    pub name: String,
    /// The shape in row-major order (slowest first), as [`crate::HostTensor`] has it; the file
    /// stores it reversed.
    pub shape: Vec<usize>,
    /// The element type in the file.
    pub ggml_type: GgmlType,
    pub data: TensorData<'a>,
}

impl WriteTensor<'_> {
    fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    fn n_bytes(&self) -> u64 {
        self.elements() as u64 / self.ggml_type.block_size() * self.ggml_type.type_size()
    }
}

/// What [`write`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteReport {
    /// The file's length.
    pub bytes: u64,
    /// The offset of the data section.
    pub data_start: u64,
    /// The alignment used.
    pub alignment: u64,
}

/// Writes the GGUF file `path` atomically (see the module documentation).
pub fn write(
    path: &Path,
    metadata: &[(String, MetadataValue)],
    tensors: &[WriteTensor<'_>],
) -> Result<WriteReport> {
    let location = path.display().to_string();
    let alignment = check(&location, metadata, tensors)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{location}: not a file path")))?;
    let temp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // Errors name the destination, which is what the caller asked for.
    let written = File::create(&temp)
        .map_err(|e| Error::io(path, e))
        .and_then(|file| {
            let mut out = BufWriter::with_capacity(1 << 20, file);
            let report = write_to(&mut out, &location, alignment, metadata, tensors)
                .map_err(|e| e.into_error(path))?;
            let file = out
                .into_inner()
                .map_err(|e| Error::io(path, e.into_error()))?;
            file.sync_all().map_err(|e| Error::io(path, e))?;
            Ok(report)
        })
        .and_then(|report| {
            std::fs::rename(&temp, path).map_err(|e| Error::io(path, e))?;
            Ok(report)
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    } else if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    written
}

/// Checks everything that can be wrong before a byte is written; returns the alignment.
fn check(
    location: &str,
    metadata: &[(String, MetadataValue)],
    tensors: &[WriteTensor<'_>],
) -> Result<u64> {
    let mut keys = HashSet::new();
    let mut alignment = DEFAULT_ALIGNMENT;
    for (key, value) in metadata {
        let at = || format!("{location}: key `{key}`");
        if !keys.insert(key.as_str()) {
            return Err(Error::Invalid(format!("{}: given twice", at())));
        }
        check_value(value).map_err(|m| Error::Invalid(format!("{}: {m}", at())))?;
        if key == "general.alignment" {
            alignment = match value {
                MetadataValue::U32(a) if a.is_power_of_two() => u64::from(*a),
                other => {
                    return Err(Error::Invalid(format!(
                        "{}: must be a power of two as a uint32, not {other:?}",
                        at()
                    )))
                }
            };
        }
    }
    let mut names = HashSet::new();
    for t in tensors {
        let at = format!("{location}: tensor `{}`", t.name);
        let fail = |m: String| Err(Error::Invalid(format!("{at}: {m}")));
        if !names.insert(t.name.as_str()) {
            return fail("given twice".into());
        }
        if t.name.len() >= MAX_NAME {
            return fail(format!(
                "the name is {} bytes; llama.cpp reads names shorter than {MAX_NAME}",
                t.name.len()
            ));
        }
        if t.shape.is_empty() || t.shape.len() > 4 || t.shape.contains(&0) {
            return fail(format!(
                "shape {:?}: GGUF tensors have 1 to 4 non-zero dimensions",
                t.shape
            ));
        }
        let row = *t.shape.last().expect("not empty");
        let block = t.ggml_type.block_size() as usize;
        if row % block != 0 {
            return fail(format!(
                "rows of {row} elements are not whole {} blocks of {block}",
                t.ggml_type
            ));
        }
        match t.data {
            TensorData::F32(values) => {
                if !quantize::ENCODABLE.contains(&t.ggml_type) {
                    return fail(QuantizeError::Unsupported(t.ggml_type).to_string());
                }
                if values.len() != t.elements() {
                    return fail(format!("{} values for shape {:?}", values.len(), t.shape));
                }
            }
            TensorData::Raw(bytes) => {
                if bytes.len() as u64 != t.n_bytes() {
                    return fail(format!(
                        "{} bytes, but {} of shape {:?} take {}",
                        bytes.len(),
                        t.ggml_type,
                        t.shape,
                        t.n_bytes()
                    ));
                }
            }
        }
    }
    Ok(alignment)
}

/// GGUF's value type id of `v`.
fn type_id(v: &MetadataValue) -> u32 {
    match v {
        MetadataValue::U8(_) => 0,
        MetadataValue::I8(_) => 1,
        MetadataValue::U16(_) => 2,
        MetadataValue::I16(_) => 3,
        MetadataValue::U32(_) => 4,
        MetadataValue::I32(_) => 5,
        MetadataValue::F32(_) => 6,
        MetadataValue::Bool(_) => 7,
        MetadataValue::String(_) => 8,
        MetadataValue::Array(_) => 9,
        MetadataValue::U64(_) => 10,
        MetadataValue::I64(_) => 11,
        MetadataValue::F64(_) => 12,
    }
}

/// An array's elements share one type (and nested arrays their element types, recursively).
fn check_value(v: &MetadataValue) -> std::result::Result<(), String> {
    let MetadataValue::Array(items) = v else {
        return Ok(());
    };
    if let Some(first) = items.first() {
        if let Some(other) = items.iter().find(|i| type_id(i) != type_id(first)) {
            return Err(format!(
                "an array mixes {} and {} elements (GGUF arrays have one element type)",
                first.type_name(),
                other.type_name()
            ));
        }
    }
    items.iter().try_for_each(check_value)
}

/// A failure while writing: of the sink, or of encoding a tensor (which `check` rules out).
enum WriteError {
    Io(std::io::Error),
    Encode(String),
}

impl WriteError {
    fn into_error(self, path: &Path) -> Error {
        match self {
            WriteError::Io(e) => Error::io(path, e),
            WriteError::Encode(m) => Error::Invalid(m),
        }
    }
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> WriteError {
        WriteError::Io(e)
    }
}

fn put_string(out: &mut impl Write, s: &str) -> std::io::Result<()> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s.as_bytes())
}

fn put_value(out: &mut impl Write, v: &MetadataValue) -> std::io::Result<()> {
    match v {
        MetadataValue::U8(x) => out.write_all(&x.to_le_bytes()),
        MetadataValue::I8(x) => out.write_all(&x.to_le_bytes()),
        MetadataValue::U16(x) => out.write_all(&x.to_le_bytes()),
        MetadataValue::I16(x) => out.write_all(&x.to_le_bytes()),
        MetadataValue::U32(x) => out.write_all(&x.to_le_bytes()),
        MetadataValue::I32(x) => out.write_all(&x.to_le_bytes()),
        MetadataValue::F32(x) => out.write_all(&x.to_le_bytes()),
        MetadataValue::Bool(x) => out.write_all(&[u8::from(*x)]),
        MetadataValue::String(s) => put_string(out, s),
        MetadataValue::Array(items) => {
            // An empty array has no element to take a type from; uint8 is as good as any.
            let elem = items.first().map_or(0, type_id);
            out.write_all(&elem.to_le_bytes())?;
            out.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|i| put_value(out, i))
        }
        MetadataValue::U64(x) => out.write_all(&x.to_le_bytes()),
        MetadataValue::I64(x) => out.write_all(&x.to_le_bytes()),
        MetadataValue::F64(x) => out.write_all(&x.to_le_bytes()),
    }
}

/// Counts what goes through it, for padding.
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> Counting<W> {
    fn pad(&mut self, alignment: u64) -> std::io::Result<()> {
        let pad = self.written.div_ceil(alignment) * alignment - self.written;
        self.write_all(&vec![0u8; pad as usize])
    }
}

fn write_to(
    sink: &mut impl Write,
    location: &str,
    alignment: u64,
    metadata: &[(String, MetadataValue)],
    tensors: &[WriteTensor<'_>],
) -> std::result::Result<WriteReport, WriteError> {
    let mut out = Counting {
        inner: sink,
        written: 0,
    };
    out.write_all(b"GGUF")?;
    out.write_all(&VERSION.to_le_bytes())?;
    out.write_all(&(tensors.len() as u64).to_le_bytes())?;
    out.write_all(&(metadata.len() as u64).to_le_bytes())?;
    for (key, value) in metadata {
        put_string(&mut out, key)?;
        out.write_all(&type_id(value).to_le_bytes())?;
        put_value(&mut out, value)?;
    }
    let mut offset = 0u64;
    for t in tensors {
        put_string(&mut out, &t.name)?;
        out.write_all(&(t.shape.len() as u32).to_le_bytes())?;
        for &d in t.shape.iter().rev() {
            out.write_all(&(d as u64).to_le_bytes())?;
        }
        out.write_all(&t.ggml_type.id().to_le_bytes())?;
        out.write_all(&offset.to_le_bytes())?;
        offset += t.n_bytes().div_ceil(alignment) * alignment;
    }
    out.pad(alignment)?;
    let data_start = out.written;
    for t in tensors {
        match t.data {
            TensorData::Raw(bytes) => out.write_all(bytes)?,
            TensorData::F32(values) => {
                let bytes = quantize::quantize(t.ggml_type, values).map_err(|e| {
                    WriteError::Encode(format!("{location}: tensor `{}`: {e}", t.name))
                })?;
                out.write_all(&bytes)?;
            }
        }
        out.pad(alignment)?;
    }
    out.flush()?;
    Ok(WriteReport {
        bytes: out.written,
        data_start,
        alignment,
    })
}

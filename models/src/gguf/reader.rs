//! [`GgufFile`]: a GGUF file (v2 or v3, little-endian) mapped into memory: its header,
//! metadata, tensor infos and tensor data, every count and offset checked against the file's
//! length before anything is allocated or sliced.
//!
//! The layout: magic `GGUF`, u32 version, u64 tensor count, u64 metadata count, the metadata
//! pairs (string key, u32 value type, value), the tensor infos (string name, u32 dimension
//! count, u64 dimensions with the fastest first, u32 `ggml_type`, u64 offset into the data
//! section), then the data section at the next multiple of `general.alignment` (32 when the
//! key is absent). Strings are a u64 length and UTF-8 bytes.

use super::dequant::{self, DequantError};
use super::metadata::{Metadata, MetadataValue};
use super::types::GgmlType;
use crate::{Error, HostTensor, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The alignment of the data section and of each tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The most dimensions a ggml tensor has.
const MAX_DIMS: u32 = 4;
/// How deeply arrays may nest (GGUF allows arrays of arrays; real files use at most one level).
const MAX_ARRAY_DEPTH: u32 = 4;

/// One tensor's entry in the header.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// The llama.cpp name (`blk.0.attn_q.weight`).
    pub name: String,
    /// The dimensions as GGUF stores them: `dims[0]` (ne0) is the fastest-varying one.
    pub dims: Vec<u64>,
    /// The element type.
    pub ggml_type: GgmlType,
    /// The offset of the tensor's bytes from the start of the data section.
    pub offset: u64,
    /// The number of elements.
    pub n_elements: u64,
    /// The number of bytes of its data.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// The shape in row-major order (slowest first), as Hugging Face and [`HostTensor`] have it:
    /// the GGUF dimensions reversed, so GGUF `[ne0, ne1]` is `[ne1, ne0]`.
    pub fn shape(&self) -> Vec<usize> {
        // Every dimension fits usize: checked when the file was opened.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A GGUF file opened for reading. The tensor data stays in the memory map until a tensor is
/// dequantized.
pub struct GgufFile {
    path: PathBuf,
    map: memmap2::Mmap,
    version: u32,
    alignment: u64,
    data_start: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and checks `path`: the header, every metadata pair, every tensor info, and that each
    /// tensor's data lies inside the file at an aligned offset.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; like every reader of memory-mapped files, this assumes no
        // other process truncates or rewrites the file while it is open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let header = parse(&map, &path.display().to_string())?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            version: header.version,
            alignment: header.alignment,
            data_start: header.data_start,
            metadata: header.metadata,
            by_name: header
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            tensors: header.tensors,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of the data section and of each tensor's offset.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The byte offset of the data section in the file.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// The metadata pairs.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`, if there is one.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// `general.architecture`, which every model file has.
    pub fn architecture(&self) -> Result<&str> {
        self.metadata
            .get_str("general.architecture")?
            .ok_or_else(|| self.metadata.error("general.architecture", "missing"))
    }

    /// The raw bytes of a tensor's data (in range: checked at open).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.data_start + info.offset) as usize;
        &self.map[start..start + info.n_bytes as usize]
    }

    /// The tensor `name` converted to f32, in Hugging Face's row-major shape (see
    /// [`TensorInfo::shape`]). Errors for a missing tensor or a type Kiln cannot dequantize.
    pub fn dequantize(&self, name: &str) -> Result<HostTensor> {
        let info = self.tensor(name).ok_or_else(|| {
            Error::format(
                format!("{}: tensor `{name}`", self.path.display()),
                "no such tensor in the file",
            )
        })?;
        self.dequantize_info(info)
    }

    /// [`GgufFile::dequantize`] for a tensor info of this file.
    pub fn dequantize_info(&self, info: &TensorInfo) -> Result<HostTensor> {
        let location = || format!("{}: tensor `{}`", self.path.display(), info.name);
        let data =
            dequant::dequantize(info.ggml_type, self.tensor_bytes(info)).map_err(|e| match e {
                DequantError::Unsupported(_) => Error::unsupported(location(), e.to_string()),
                DequantError::Length { .. } => Error::format(location(), e.to_string()),
            })?;
        Ok(HostTensor {
            shape: info.shape(),
            data,
        })
    }
}

/// What [`parse`] reads from the header.
struct Header {
    version: u32,
    alignment: u64,
    data_start: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
}

/// Reads little-endian values from the file, failing (never panicking) at its end.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a str,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::format(
                format!("{}: {}", self.path, what()),
                format!(
                    "the file is truncated: {n} bytes needed at offset {}, the file has {}",
                    self.pos,
                    self.bytes.len()
                ),
            ));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let b = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A count of items each at least `min_size` bytes long, refused when the rest of the file
    /// could not hold that many (so a corrupt count never becomes a huge allocation).
    fn count(&mut self, min_size: usize, what: &dyn Fn() -> String) -> Result<usize> {
        let n = self.u64(what)?;
        let fits = usize::try_from(n).ok().filter(|&n| {
            n.checked_mul(min_size)
                .is_some_and(|b| b <= self.remaining())
        });
        fits.ok_or_else(|| {
            Error::format(
                format!("{}: {}", self.path, what()),
                format!(
                    "a count of {n} at offset {} does not fit in the {} bytes left in the file",
                    self.pos - 8,
                    self.remaining()
                ),
            )
        })
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.count(1, what)?;
        let start = self.pos;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            Error::format(
                format!("{}: {}", self.path, what()),
                format!("the string at offset {start} is not valid UTF-8"),
            )
        })
    }

    fn value(&mut self, ty: u32, depth: u32, what: &dyn Fn() -> String) -> Result<MetadataValue> {
        Ok(match ty {
            0 => MetadataValue::U8(self.array::<1>(what)?[0]),
            1 => MetadataValue::I8(self.array::<1>(what)?[0] as i8),
            2 => MetadataValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => MetadataValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => MetadataValue::U32(self.u32(what)?),
            5 => MetadataValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => MetadataValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => MetadataValue::Bool(false),
                1 => MetadataValue::Bool(true),
                b => {
                    return Err(Error::format(
                        format!("{}: {}", self.path, what()),
                        format!("a bool is 0 or 1, not {b}"),
                    ))
                }
            },
            8 => MetadataValue::String(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::format(
                        format!("{}: {}", self.path, what()),
                        format!("arrays nested more than {MAX_ARRAY_DEPTH} deep"),
                    ));
                }
                let elem = self.u32(what)?;
                let min_size =
                    value_min_size(elem).ok_or_else(|| bad_type(self.path, what, elem))?;
                let n = self.count(min_size, what)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1, what)?);
                }
                MetadataValue::Array(items)
            }
            10 => MetadataValue::U64(self.u64(what)?),
            11 => MetadataValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => MetadataValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => return Err(bad_type(self.path, what, other)),
        })
    }
}

fn bad_type(path: &str, what: &dyn Fn() -> String, ty: u32) -> Error {
    Error::format(
        format!("{path}: {}", what()),
        format!("unknown metadata value type {ty} (GGUF defines 0 to 12)"),
    )
}

/// The fewest bytes a value of GGUF value type `ty` occupies.
fn value_min_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

/// Parses and checks the header of the GGUF bytes `bytes` (named `path` in errors).
fn parse(bytes: &[u8], path: &str) -> Result<Header> {
    let mut c = Cursor {
        bytes,
        pos: 0,
        path,
    };
    let header = || "header".to_string();
    let magic = c.take(4, &header)?;
    if magic != b"GGUF" {
        return Err(Error::format(
            path,
            format!("not a GGUF file: the magic is {magic:02x?}, not `GGUF`"),
        ));
    }
    let version = c.u32(&header)?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(Error::unsupported(
                path,
                "GGUF version 1 is not supported (versions 2 and 3 are)",
            ))
        }
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(Error::unsupported(
                path,
                "big-endian GGUF files are not supported",
            ))
        }
        v => {
            return Err(Error::unsupported(
                path,
                format!("GGUF version {v} is not supported (versions 2 and 3 are)"),
            ))
        }
    }
    // Each tensor info is at least 24 bytes, each metadata pair at least 13.
    let n_tensors = c.count(24, &|| "header: tensor count".to_string())?;
    let n_kv = c.count(13, &|| "header: metadata count".to_string())?;

    let mut metadata = Metadata::new(path.to_string());
    for i in 0..n_kv {
        let key = c.string(&|| format!("metadata pair {i}: key"))?;
        let what = || format!("key `{key}`");
        let ty = c.u32(&what)?;
        let value = c.value(ty, 0, &what)?;
        metadata.insert(key, value)?;
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(MetadataValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(v) => {
            return Err(metadata.error(
                "general.alignment",
                format!("expected a power of two as a uint32, found {v:?}"),
            ))
        }
    };

    let mut tensors = Vec::with_capacity(n_tensors);
    let mut names = std::collections::HashSet::new();
    for i in 0..n_tensors {
        let name = c.string(&|| format!("tensor info {i}: name"))?;
        let what = || format!("tensor `{name}`");
        let location = format!("{path}: tensor `{name}`");
        let n_dims = c.u32(&what)?;
        if n_dims > MAX_DIMS {
            return Err(Error::format(
                location,
                format!("{n_dims} dimensions (ggml tensors have at most {MAX_DIMS})"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&what)?);
        }
        let type_id = c.u32(&what)?;
        let offset = c.u64(&what)?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
            Error::unsupported(location.clone(), format!("unknown ggml type id {type_id}"))
        })?;
        let (n_elements, n_bytes) =
            tensor_size(&dims, ggml_type).map_err(|m| Error::format(location.clone(), m))?;
        if !names.insert(name.clone()) {
            return Err(Error::format(location, "two tensors have this name"));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_elements,
            n_bytes,
        });
    }

    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    let file_len = bytes.len() as u64;
    for t in &tensors {
        let location = || format!("{path}: tensor `{}`", t.name);
        if t.offset % alignment != 0 {
            return Err(Error::format(
                location(),
                format!(
                    "data offset {} is not a multiple of the alignment {alignment}",
                    t.offset
                ),
            ));
        }
        let end = data_start
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.n_bytes));
        if end.is_none_or(|end| end > file_len) {
            return Err(Error::format(
                location(),
                format!(
                    "its {} bytes at offset {} of the data section (which starts at {data_start}) \
                     run past the end of the file ({file_len} bytes)",
                    t.n_bytes, t.offset
                ),
            ));
        }
    }

    Ok(Header {
        version,
        alignment,
        data_start,
        metadata,
        tensors,
    })
}

/// The element and byte counts of a tensor of `dims` and `ty`, checked for overflow and for
/// rows that are whole blocks.
fn tensor_size(dims: &[u64], ty: GgmlType) -> std::result::Result<(u64, u64), String> {
    let mut n: u64 = 1;
    for &d in dims {
        n = n
            .checked_mul(d)
            .filter(|&n| usize::try_from(n).is_ok())
            .ok_or_else(|| format!("its dimensions {dims:?} overflow"))?;
    }
    let block = ty.block_size();
    let row = dims.first().copied().unwrap_or(1);
    if row % block != 0 {
        return Err(format!(
            "its rows of {row} elements are not whole {ty} blocks of {block}"
        ));
    }
    let bytes = (n / block)
        .checked_mul(ty.type_size())
        .filter(|&b| usize::try_from(b).is_ok())
        .ok_or_else(|| format!("its dimensions {dims:?} overflow"))?;
    Ok((n, bytes))
}

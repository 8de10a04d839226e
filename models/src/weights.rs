//! Safetensors checkpoints: [`SafeTensors`] reads one `model.safetensors` or a sharded folder
//! (`model.safetensors.index.json`) through memory maps, converting tensors to f32 on request;
//! [`save`] writes one file atomically.
//!
//! Headers are validated by the `safetensors` crate (header length, JSON, offsets that tile the
//! data exactly, sizes that match shape and dtype); every error it reports is wrapped with the
//! file's path. A corrupt file is an error, never a panic.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use memmap2::Mmap;
use serde_json::Value;

pub use safetensors::Dtype;

use crate::{Error, HostTensor, Result};

/// The file name of a checkpoint held in one file.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The file name of a sharded checkpoint's index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// How many names an error about missing or unexpected tensors lists.
const LISTED: usize = 5;

/// One mapped `.safetensors` file.
struct MappedFile {
    path: PathBuf,
    map: Mmap,
    metadata: HashMap<String, String>,
}

/// Where a tensor is: its file, dtype, shape and the byte range of its data in the mapping.
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// What a checkpoint says about one tensor, without reading its data.
#[derive(Clone, Copy, Debug)]
pub struct TensorInfo<'a> {
    /// The file that holds it.
    pub file: &'a Path,
    /// The dtype of its data in the file.
    pub dtype: Dtype,
    /// Its shape, outermost first.
    pub shape: &'a [usize],
}

/// An open safetensors checkpoint: tensor names mapped to their files, dtypes and shapes.
/// The data is read (and converted to f32) only by [`SafeTensors::get`].
pub struct SafeTensors {
    /// The folder, file or index it was opened from, for errors about the whole checkpoint.
    source: PathBuf,
    files: Vec<MappedFile>,
    tensors: BTreeMap<String, Entry>,
}

impl std::fmt::Debug for SafeTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeTensors")
            .field("source", &self.source)
            .field("files", &self.files.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl SafeTensors {
    /// Opens a checkpoint: `path` is a folder holding `model.safetensors` or
    /// `model.safetensors.index.json` (whose `weight_map` names the shards), an index file, or
    /// one `.safetensors` file.
    ///
    /// The files are memory-mapped, so they must not be modified while the checkpoint is open
    /// (replacing them by a rename, as [`save`] does, is fine: the mapping keeps the old file).
    pub fn open(path: impl AsRef<Path>) -> Result<SafeTensors> {
        let path = path.as_ref();
        if path.is_dir() {
            let index = path.join(INDEX_FILE);
            if index.is_file() {
                return SafeTensors::open_index(&index);
            }
            let single = path.join(SINGLE_FILE);
            if single.is_file() {
                // Errors about the checkpoint as a whole name the one file it is.
                return SafeTensors::open_files(&single, std::slice::from_ref(&single), None);
            }
            return Err(Error::format(
                path.display().to_string(),
                format!("no {SINGLE_FILE} or {INDEX_FILE} in this folder"),
            ));
        }
        if path.to_string_lossy().ends_with(".index.json") {
            return SafeTensors::open_index(path);
        }
        SafeTensors::open_files(path, &[path.to_path_buf()], None)
    }

    /// Opens the shards that an index's `weight_map` names, and checks that each tensor is in
    /// the shard the index says.
    fn open_index(index: &Path) -> Result<SafeTensors> {
        let location = index.display().to_string();
        let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&location, format!("invalid JSON: {e}")))?;
        let weight_map = value
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                Error::format(&location, "key `weight_map`: missing or not an object")
            })?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shards: Vec<PathBuf> = Vec::new();
        let mut listed: HashMap<&str, usize> = HashMap::new();
        for (name, file) in weight_map {
            let file = file.as_str().ok_or_else(|| {
                Error::format(
                    &location,
                    format!(
                        "key `weight_map`: tensor `{name}`: expected a file name, found {file}"
                    ),
                )
            })?;
            let relative = Path::new(file);
            let plain = relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
            if !plain || file.is_empty() {
                return Err(Error::format(
                    &location,
                    format!(
                        "key `weight_map`: tensor `{name}`: `{file}` is not a file name inside \
                         the checkpoint's folder"
                    ),
                ));
            }
            let shard = dir.join(relative);
            let at = match shards.iter().position(|s| *s == shard) {
                Some(at) => at,
                None => {
                    shards.push(shard);
                    shards.len() - 1
                }
            };
            listed.insert(name.as_str(), at);
        }
        if shards.is_empty() {
            return Err(Error::format(
                &location,
                "key `weight_map`: names no tensor",
            ));
        }
        SafeTensors::open_files(index, &shards, Some(&listed))
    }

    /// Maps `paths` and collects their tensors; with `listed`, each listed tensor must be in the
    /// file of that index.
    fn open_files(
        source: &Path,
        paths: &[PathBuf],
        listed: Option<&HashMap<&str, usize>>,
    ) -> Result<SafeTensors> {
        let mut files: Vec<MappedFile> = Vec::with_capacity(paths.len());
        let mut tensors: BTreeMap<String, Entry> = BTreeMap::new();
        for (index, path) in paths.iter().enumerate() {
            let (file, entries) = map_file(path, index)?;
            for (name, entry) in entries {
                if let Some(other) = tensors.get(&name) {
                    return Err(Error::format(
                        format!("{}: tensor `{name}`", path.display()),
                        format!("also in {}", files[other.file].path.display()),
                    ));
                }
                tensors.insert(name, entry);
            }
            files.push(file);
        }
        if let Some(listed) = listed {
            for (name, &at) in listed {
                let listed_path = &files[at].path;
                match tensors.get(*name) {
                    Some(entry) if entry.file == at => {}
                    Some(entry) => {
                        return Err(Error::format(
                            format!("{}: tensor `{name}`", source.display()),
                            format!(
                                "the index puts it in {} but it is in {}",
                                listed_path.display(),
                                files[entry.file].path.display()
                            ),
                        ))
                    }
                    None => {
                        return Err(Error::format(
                            format!("{}: tensor `{name}`", source.display()),
                            format!(
                                "the index puts it in {}, which does not hold it",
                                listed_path.display()
                            ),
                        ))
                    }
                }
            }
        }
        Ok(SafeTensors {
            source: source.to_path_buf(),
            files,
            tensors,
        })
    }

    /// The folder, index or file the checkpoint was opened from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the checkpoint holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Whether the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The file, dtype and shape of `name`, if the checkpoint holds it.
    pub fn info(&self, name: &str) -> Option<TensorInfo<'_>> {
        let entry = self.tensors.get(name)?;
        Some(TensorInfo {
            file: &self.files[entry.file].path,
            dtype: entry.dtype,
            shape: &entry.shape,
        })
    }

    /// The `__metadata__` of the files (merged, first file first, for a sharded checkpoint).
    pub fn metadata(&self) -> BTreeMap<String, String> {
        let mut merged = BTreeMap::new();
        for file in &self.files {
            for (k, v) in &file.metadata {
                merged.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        merged
    }

    /// Reads tensor `name`, converting F32, BF16 or F16 data to f32 (exactly).
    pub fn get(&self, name: &str) -> Result<HostTensor> {
        let entry = self.tensors.get(name).ok_or_else(|| {
            Error::format(
                format!("{}: tensor `{name}`", self.source.display()),
                "not in the checkpoint",
            )
        })?;
        let file = &self.files[entry.file];
        let location = || format!("{}: tensor `{name}`", file.path.display());
        let bytes = file
            .map
            .get(entry.start..entry.end)
            .ok_or_else(|| Error::format(location(), "data range past the end of the file"))?;
        let data = to_f32(entry.dtype, bytes).ok_or_else(|| {
            Error::unsupported(
                location(),
                format!(
                    "dtype {} is not supported (F32, BF16 and F16 are)",
                    entry.dtype
                ),
            )
        })?;
        Ok(HostTensor {
            shape: entry.shape.clone(),
            data,
        })
    }

    /// Checks the checkpoint against the tensors a model expects (as
    /// [`ModelConfig::parameters`](crate::ModelConfig::parameters) lists them): every one must
    /// be there with that shape and a readable dtype, and no other may be.
    ///
    /// One exception: a checkpoint of a model with tied embeddings (one that expects
    /// `model.embed_tokens.weight` but no `lm_head.weight`) may also hold an `lm_head.weight`
    /// of the embedding's shape. Some exporters write the tied matrix twice; Hugging Face ties
    /// it to the embedding on load, and so does Kiln, which never reads it.
    pub fn check(&self, expected: &[(String, Vec<usize>)]) -> Result<()> {
        let source = self.source.display();
        let wanted: HashMap<&str, &[usize]> = expected
            .iter()
            .map(|(name, shape)| (name.as_str(), shape.as_slice()))
            .collect();

        let missing: Vec<&str> = expected
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| !self.tensors.contains_key(*name))
            .collect();
        if !missing.is_empty() {
            return Err(Error::format(
                source.to_string(),
                format!(
                    "{} missing: {}",
                    count_tensors(missing.len()),
                    listing(&missing)
                ),
            ));
        }

        for (name, shape) in expected {
            let entry = &self.tensors[name];
            let location = || format!("{}: tensor `{name}`", self.files[entry.file].path.display());
            if entry.shape != *shape {
                return Err(Error::format(
                    location(),
                    format!("shape {:?}, but the model expects {shape:?}", entry.shape),
                ));
            }
            if !matches!(entry.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16) {
                return Err(Error::unsupported(
                    location(),
                    format!(
                        "dtype {} is not supported (F32, BF16 and F16 are)",
                        entry.dtype
                    ),
                ));
            }
        }

        let tied_lm_head = |name: &str, entry: &Entry| {
            name == "lm_head.weight"
                && !wanted.contains_key("lm_head.weight")
                && wanted.get("model.embed_tokens.weight") == Some(&entry.shape.as_slice())
        };
        let extra: Vec<&str> = self
            .tensors
            .iter()
            .filter(|(name, entry)| {
                !wanted.contains_key(name.as_str()) && !tied_lm_head(name, entry)
            })
            .map(|(name, _)| name.as_str())
            .collect();
        if !extra.is_empty() {
            let first = &self.files[self.tensors[extra[0]].file].path;
            return Err(Error::format(
                format!("{}: tensor `{}`", first.display(), extra[0]),
                format!(
                    "{} the model does not have: {}",
                    count_tensors(extra.len()),
                    listing(&extra)
                ),
            ));
        }
        Ok(())
    }
}

fn count_tensors(n: usize) -> String {
    if n == 1 {
        "1 tensor".to_string()
    } else {
        format!("{n} tensors")
    }
}

/// The first few names, then how many more.
fn listing(names: &[&str]) -> String {
    let mut text: Vec<String> = names
        .iter()
        .take(LISTED)
        .map(|n| format!("`{n}`"))
        .collect();
    if names.len() > LISTED {
        text.push(format!("and {} more", names.len() - LISTED));
    }
    text.join(", ")
}

/// Maps one file and reads its header; `index` is the file's position in the checkpoint.
fn map_file(path: &Path, index: usize) -> Result<(MappedFile, Vec<(String, Entry)>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the mapping is read-only, and a checkpoint's files are not modified while it is
    // open (as `SafeTensors::open` documents); every read goes through a range checked
    // against the mapping's length.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let location = path.display().to_string();
    let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&map)
        .map_err(|e| Error::format(&location, format!("invalid safetensors file: {e}")))?;
    let data_start = 8 + header_len;
    let mut entries = Vec::new();
    for (name, info) in metadata.tensors() {
        let (start, end) = info.data_offsets;
        let (Some(start), Some(end)) = (data_start.checked_add(start), data_start.checked_add(end))
        else {
            return Err(Error::format(
                format!("{location}: tensor `{name}`"),
                "data offsets overflow",
            ));
        };
        if start > end || end > map.len() {
            return Err(Error::format(
                format!("{location}: tensor `{name}`"),
                format!(
                    "data range {start}..{end} outside the file's {} bytes",
                    map.len()
                ),
            ));
        }
        entries.push((
            name,
            Entry {
                file: index,
                dtype: info.dtype,
                shape: info.shape.clone(),
                start,
                end,
            },
        ));
    }
    let metadata = metadata.metadata().clone().unwrap_or_default();
    Ok((
        MappedFile {
            path: path.to_path_buf(),
            map,
            metadata,
        },
        entries,
    ))
}

/// Little-endian F32, BF16 or F16 bytes as f32; `None` for any other dtype.
fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let data = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    };
    Some(data)
}

/// The dtype [`save`] stores tensors in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveDtype {
    /// Exact.
    F32,
    /// Rounded to the nearest bfloat16 (ties to even).
    BF16,
}

/// One tensor being written, converted to the file's dtype when the writer asks for its bytes.
struct Encoded<'a> {
    tensor: &'a HostTensor,
    dtype: SaveDtype,
}

impl safetensors::View for Encoded<'_> {
    fn dtype(&self) -> Dtype {
        match self.dtype {
            SaveDtype::F32 => Dtype::F32,
            SaveDtype::BF16 => Dtype::BF16,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.tensor.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let data = &self.tensor.data;
        Cow::Owned(match self.dtype {
            SaveDtype::F32 => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            SaveDtype::BF16 => data
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
        })
    }

    fn data_len(&self) -> usize {
        let element = match self.dtype {
            SaveDtype::F32 => 4,
            SaveDtype::BF16 => 2,
        };
        self.tensor.data.len() * element
    }
}

/// Writes `tensors` to the safetensors file `path`, in `dtype`, with `metadata` as the header's
/// `__metadata__` (with `"format": "pt"` added unless given: transformers refuses files
/// without it).
///
/// The file is written to a temporary file in the same folder, synced, then renamed over
/// `path`, so a reader never sees half a file and a crash leaves the old one.
pub fn save(
    path: impl AsRef<Path>,
    tensors: &[(&str, &HostTensor)],
    dtype: SaveDtype,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let location = path.display().to_string();
    let mut names = std::collections::HashSet::new();
    for (name, tensor) in tensors {
        if !names.insert(*name) {
            return Err(Error::Invalid(format!(
                "{location}: tensor `{name}` given twice"
            )));
        }
        if tensor.shape.iter().product::<usize>() != tensor.data.len() {
            return Err(Error::Invalid(format!(
                "{location}: tensor `{name}`: shape {:?} does not match its {} elements",
                tensor.shape,
                tensor.data.len()
            )));
        }
    }
    let mut info: HashMap<String, String> = metadata.clone().into_iter().collect();
    info.entry("format".to_string())
        .or_insert_with(|| "pt".to_string());
    let views = tensors
        .iter()
        .map(|(name, tensor)| (*name, Encoded { tensor, dtype }));

    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{location}: not a file path")))?;
    // Unique per process and per call, so concurrent saves never share a temporary file.
    static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let serial = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temporary = dir.join(format!(
        ".{}.tmp-{}-{serial}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let written = safetensors::serialize_to_file(views, Some(info), &temporary)
        .map_err(|e| match e {
            safetensors::SafeTensorError::IoError(io) => Error::io(&temporary, io),
            other => Error::format(&location, format!("cannot write safetensors: {other}")),
        })
        .and_then(|()| {
            File::options()
                .write(true)
                .open(&temporary)
                .and_then(|mut f| {
                    f.flush()?;
                    f.sync_all()
                })
                .map_err(|e| Error::io(&temporary, e))
        })
        .and_then(|()| std::fs::rename(&temporary, path).map_err(|e| Error::io(path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
        return written;
    }
    // Make the rename itself durable; a failure here loses nothing already written.
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

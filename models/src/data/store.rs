//! [`TokenStore`]: tokenized examples in one flat file — what tokenizing a dataset produces and
//! what training reads, memory-mapped, so a dataset larger than memory trains from disk.
//!
//! Layout (little-endian): the magic `KILNTOK1`; the number of examples, of tokens, and the
//! length of a trailing JSON note (three u64); one (token id u32, label i32) pair per token,
//! example after example (labels aligned with ids as in Hugging Face: `-100` where the token
//! is not a target); the example offsets (u64, examples + 1 of them); the note. Written to a
//! temporary file and renamed, so a reader never sees half of one.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::batch::Sequence;
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"KILNTOK1";
const HEADER: usize = 32;

enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// Tokenized examples: ids and aligned labels, read one example at a time.
pub struct TokenStore {
    bytes: Bytes,
    /// Token offsets of the examples (examples + 1), kept in memory: 8 bytes an example.
    offsets: Vec<u64>,
    note: String,
    location: String,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("location", &self.location)
            .field("examples", &self.len())
            .field("tokens", &self.tokens())
            .finish()
    }
}

impl TokenStore {
    /// The examples `sequences`, in memory (a sequence without labels predicts every token).
    /// Labels must be aligned with the ids.
    pub fn from_sequences(sequences: &[Sequence]) -> Result<TokenStore> {
        let location = "sequences in memory";
        let fail = |e: std::io::Error| Error::Invalid(format!("{location}: {e}"));
        let mut writer = StoreWriter::new(std::io::Cursor::new(Vec::new()));
        for s in sequences {
            writer.push(s).map_err(fail)?;
        }
        let bytes = writer.finish("").map_err(fail)?.into_inner();
        TokenStore::parse(Bytes::Owned(bytes), location.into())
    }

    /// A store from the bytes a [`StoreWriter`] wrote.
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Result<TokenStore> {
        TokenStore::parse(Bytes::Owned(bytes), "memory".into())
    }

    /// Maps the store file `path`, checking that its sizes agree.
    pub fn open(path: &Path) -> Result<TokenStore> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the store is written once, to a temporary name, and renamed into place; it is
        // never modified afterwards, so the mapping does not change under us.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        TokenStore::parse(Bytes::Mapped(map), path.display().to_string())
    }

    fn parse(bytes: Bytes, location: String) -> Result<TokenStore> {
        let bad = |m: &str| Error::format(&location, format!("token store: {m}"));
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err(bad("not a Kiln token store (bad magic)"));
        }
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let (examples, tokens, note_len) = (word(8), word(16), word(24));
        let pairs_end = (tokens as u128) * 8 + HEADER as u128;
        let offsets_end = pairs_end + (examples as u128 + 1) * 8;
        if offsets_end + note_len as u128 != bytes.len() as u128 {
            return Err(bad("its sizes do not add up (truncated?)"));
        }
        let (pairs_end, offsets_end) = (pairs_end as usize, offsets_end as usize);
        let offsets: Vec<u64> = bytes[pairs_end..offsets_end]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        if offsets.first() != Some(&0)
            || offsets.last() != Some(&tokens)
            || offsets.windows(2).any(|w| w[0] > w[1])
        {
            return Err(bad("its example offsets are out of order"));
        }
        let note = std::str::from_utf8(&bytes[offsets_end..])
            .map_err(|_| bad("its note is not UTF-8"))?
            .to_string();
        Ok(TokenStore {
            bytes,
            offsets,
            note,
            location,
        })
    }

    /// The number of examples.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of tokens of all examples.
    pub fn tokens(&self) -> usize {
        *self.offsets.last().unwrap() as usize
    }

    /// The number of tokens of example `i`.
    pub fn example_len(&self, i: usize) -> usize {
        (self.offsets[i + 1] - self.offsets[i]) as usize
    }

    /// Tokens `range` of example `i` as a sequence (its labels aligned with its ids).
    pub fn slice(&self, i: usize, range: std::ops::Range<usize>) -> Sequence {
        let base = self.offsets[i] as usize;
        assert!(range.end <= self.example_len(i), "slice past the example");
        let bytes = &self.bytes[HEADER + (base + range.start) * 8..HEADER + (base + range.end) * 8];
        let (mut input_ids, mut labels) = (
            Vec::with_capacity(range.len()),
            Vec::with_capacity(range.len()),
        );
        for pair in bytes.chunks_exact(8) {
            input_ids.push(u32::from_le_bytes(pair[..4].try_into().unwrap()));
            labels.push(i32::from_le_bytes(pair[4..].try_into().unwrap()));
        }
        Sequence {
            input_ids,
            labels: Some(labels),
        }
    }

    /// Example `i` as a sequence.
    pub fn example(&self, i: usize) -> Sequence {
        self.slice(i, 0..self.example_len(i))
    }

    /// The JSON note stored with the examples (how they were made).
    pub fn note(&self) -> &str {
        &self.note
    }
}

/// Writes a store example by example, then its offsets and note.
pub struct StoreWriter<W: Write + Seek> {
    out: W,
    offsets: Vec<u64>,
    error: Option<std::io::Error>,
}

impl<W: Write + Seek> StoreWriter<W> {
    /// A writer that starts at the beginning of `out`.
    pub fn new(mut out: W) -> StoreWriter<W> {
        let error = out.write_all(&[0u8; HEADER]).err();
        StoreWriter {
            out,
            offsets: vec![0],
            error,
        }
    }

    /// Appends one example (without labels: every token is its own label).
    pub fn push(&mut self, s: &Sequence) -> std::io::Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if let Some(labels) = &s.labels {
            if labels.len() != s.input_ids.len() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "example {}: {} labels for {} input ids (they must be aligned)",
                        self.len() + 1,
                        labels.len(),
                        s.input_ids.len()
                    ),
                ));
            }
        }
        let mut buf = Vec::with_capacity(s.input_ids.len() * 8);
        for (t, &id) in s.input_ids.iter().enumerate() {
            let label = s.labels.as_ref().map_or(id as i32, |l| l[t]);
            buf.extend_from_slice(&id.to_le_bytes());
            buf.extend_from_slice(&label.to_le_bytes());
        }
        self.out.write_all(&buf)?;
        let last = *self.offsets.last().unwrap();
        self.offsets.push(last + s.input_ids.len() as u64);
        Ok(())
    }

    /// The number of examples written so far.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the offsets, the note and the header; returns the output.
    pub fn finish(mut self, note: &str) -> std::io::Result<W> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let mut tail = Vec::with_capacity(self.offsets.len() * 8 + note.len());
        for o in &self.offsets {
            tail.extend_from_slice(&o.to_le_bytes());
        }
        tail.extend_from_slice(note.as_bytes());
        self.out.write_all(&tail)?;
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&(self.len() as u64).to_le_bytes());
        header.extend_from_slice(&self.offsets.last().unwrap().to_le_bytes());
        header.extend_from_slice(&(note.len() as u64).to_le_bytes());
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&header)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A store being written to `path` (through a temporary file renamed at the end).
pub struct StoreFile {
    writer: StoreWriter<BufWriter<File>>,
    temporary: PathBuf,
    path: PathBuf,
}

impl StoreFile {
    /// Starts writing the store `path`.
    pub fn create(path: &Path) -> Result<StoreFile> {
        let temporary = path.with_extension(format!("tmp{}", std::process::id()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let file = File::create(&temporary).map_err(|e| Error::io(&temporary, e))?;
        Ok(StoreFile {
            writer: StoreWriter::new(BufWriter::with_capacity(1 << 20, file)),
            temporary,
            path: path.to_path_buf(),
        })
    }

    /// Appends one example.
    pub fn push(&mut self, s: &Sequence) -> Result<()> {
        self.writer
            .push(s)
            .map_err(|e| Error::io(&self.temporary, e))
    }

    /// Finishes the file, renames it into place and maps it.
    pub fn finish(self, note: &str) -> Result<TokenStore> {
        let out = self
            .writer
            .finish(note)
            .map_err(|e| Error::io(&self.temporary, e))?;
        let file = out
            .into_inner()
            .map_err(|e| Error::io(&self.temporary, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.temporary, e))?;
        drop(file);
        std::fs::rename(&self.temporary, &self.path).map_err(|e| Error::io(&self.path, e))?;
        TokenStore::open(&self.path)
    }

    /// Removes the unfinished file.
    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.temporary);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_round_trip_through_memory_and_a_file() {
        let seqs = vec![
            Sequence::new(vec![5, 6, 7]),
            Sequence {
                input_ids: vec![1, 2],
                labels: Some(vec![-100, 2]),
            },
            Sequence::new(vec![9]),
        ];
        let store = TokenStore::from_sequences(&seqs).unwrap();
        assert_eq!((store.len(), store.tokens()), (3, 6));
        assert_eq!(store.example(0).labels, Some(vec![5, 6, 7]));
        assert_eq!(store.example(1).labels, Some(vec![-100, 2]));
        assert_eq!(store.slice(0, 1..3).input_ids, vec![6, 7]);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.tokens");
        let mut file = StoreFile::create(&path).unwrap();
        for s in &seqs {
            file.push(s).unwrap();
        }
        let mapped = file.finish("{\"n\": 3}").unwrap();
        assert_eq!(mapped.note(), "{\"n\": 3}");
        for i in 0..3 {
            assert_eq!(mapped.example(i), store.example(i));
        }
        // A truncated file is refused, naming it.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let e = TokenStore::open(&path).unwrap_err().to_string();
        assert!(e.contains("s.tokens") && e.contains("truncated"), "{e}");
    }
}

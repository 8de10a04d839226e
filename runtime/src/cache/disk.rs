//! The on-disk layer of the kernel cache: one file per key, written atomically, checked on read.
//!
//! An entry is
//!
//! ```text
//! magic      8 bytes   "KILNKC" + format version (u16 LE)
//! key_len    u32 LE
//! key        key_len bytes: the key's canonical text
//! payload_len u64 LE
//! checksum   32 bytes: SHA-256 of everything above it and of the payload
//! payload    payload_len bytes
//! ```
//!
//! Writers fill a uniquely named temporary file in the same directory, flush it to disk and
//! rename it over the entry, so readers see the old entry, the new one, or none, never a mix;
//! concurrent writers of one key each rename a complete file. A reader that finds a short,
//! altered or foreign file reports it as [`Lookup::Corrupt`] and never returns its bytes.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::key::CacheKey;
use crate::{Error, Result};

const MAGIC: [u8; 6] = *b"KILNKC";
const EXTENSION: &str = "kc";

/// What a directory holds for a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A complete, intact entry for this key: its payload.
    Hit(Vec<u8>),
    /// No entry.
    Missing,
    /// An entry that must not be used, and why (truncated, checksum mismatch, other key, ...).
    Corrupt(String),
}

/// A directory of cache entries, one file per key digest.
#[derive(Clone, Debug)]
pub struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    /// Entries in `dir`, created on the first store.
    pub fn new(dir: impl Into<PathBuf>) -> DiskCache {
        DiskCache { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the entry for `key` lives.
    pub fn path_of(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(format!("{}.{EXTENSION}", key.hex()))
    }

    /// Reads and checks the entry for `key`.
    pub fn load(&self, key: &CacheKey) -> Result<Lookup> {
        let path = self.path_of(key);
        match fs::read(&path) {
            Ok(bytes) => Ok(match decode(key, &bytes) {
                Ok(payload) => Lookup::Hit(payload.to_vec()),
                Err(why) => Lookup::Corrupt(why),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Lookup::Missing),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Writes the entry for `key` atomically, replacing any entry there.
    pub fn store(&self, key: &CacheKey, payload: &[u8]) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let path = self.path_of(key);
        let temp = self.dir.join(temp_name(key));
        let written =
            write_synced(&temp, &encode(key, payload)).and_then(|()| fs::rename(&temp, &path));
        if let Err(e) = written {
            // Best effort: the write already failed, and a stray temporary file is harmless.
            let _ = fs::remove_file(&temp);
            return Err(Error::io(path, e));
        }
        Ok(())
    }
}

/// A name no other writer, in this process or another, uses at the same time.
fn temp_name(key: &CacheKey) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(".{}.{}.{n}.tmp", key.hex(), std::process::id())
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn header(key: &CacheKey, payload_len: u64) -> Vec<u8> {
    let key = key.text().as_bytes();
    let mut out = Vec::with_capacity(8 + 4 + key.len() + 8 + 32);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(CacheKey::FORMAT as u16).to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&payload_len.to_le_bytes());
    out
}

fn checksum(header: &[u8], payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(header);
    h.update(payload);
    h.finalize().into()
}

fn encode(key: &CacheKey, payload: &[u8]) -> Vec<u8> {
    let mut out = header(key, payload.len() as u64);
    let sum = checksum(&out, payload);
    out.extend_from_slice(&sum);
    out.extend_from_slice(payload);
    out
}

/// The payload of an entry for `key`, or why the bytes are not one.
fn decode<'a>(key: &CacheKey, bytes: &'a [u8]) -> std::result::Result<&'a [u8], String> {
    // The header depends only on the key and the payload length, so rebuild it and compare.
    let probe = header(key, 0);
    let header_len = probe.len();
    let want = header_len + 32;
    if bytes.len() < want {
        return Err(format!(
            "truncated: {} bytes, a header takes {want}",
            bytes.len()
        ));
    }
    let (head, rest) = bytes.split_at(header_len);
    let (sum, payload) = rest.split_at(32);
    if head[..6] != MAGIC {
        return Err("not a kiln cache entry (bad magic)".into());
    }
    if head[6..8] != probe[6..8] {
        return Err("entry written by another cache format version".into());
    }
    if head[..header_len - 8] != probe[..header_len - 8] {
        return Err("entry is for another key".into());
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[header_len - 8..]);
    let payload_len = u64::from_le_bytes(len);
    if payload_len != payload.len() as u64 {
        return Err(format!(
            "truncated or padded: header says {payload_len} payload bytes, file holds {}",
            payload.len()
        ));
    }
    if checksum(head, payload)[..] != sum[..] {
        return Err("checksum mismatch".into());
    }
    Ok(payload)
}

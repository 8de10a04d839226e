//! Where tokenized datasets are cached, and under which key: a SHA-256 of the data file's
//! bytes, of the tokenizer (its files and chat template), of the options that change the
//! examples, and of the store's version — so any change to any of them tokenizes again.

use std::io::Read;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::DataSource;
use crate::{Error, Result};

/// Bumped whenever what a record becomes changes.
const VERSION: &str = "kiln-tokens-1";

/// `$KILN_CACHE_DIR/tokens`, else `$XDG_CACHE_HOME/kiln/tokens`, else `~/.cache/kiln/tokens`
/// (the current directory's `.kiln-cache/tokens` when there is no home).
pub fn default_cache_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("KILN_CACHE_DIR") {
        return dir.join("tokens");
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return dir.join("kiln").join("tokens");
    }
    match var("HOME") {
        Some(home) => home.join(".cache").join("kiln").join("tokens"),
        None => PathBuf::from(".kiln-cache").join("tokens"),
    }
}

/// The cache key of reading `source` (64 hex digits).
pub fn cache_key(source: &DataSource<'_>) -> Result<String> {
    let mut hash = Sha256::new();
    hash.update(VERSION.as_bytes());
    let options = source.options;
    hash.update(
        format!(
            "\0format={:?}\0train_on_prompt={}\0skip_invalid={}\0vocab={}\0",
            options.format, options.train_on_prompt, options.skip_invalid, source.vocab
        )
        .as_bytes(),
    );
    match source.tokenizer {
        Some(t) => hash.update(t.fingerprint()),
        None => hash.update(b"no tokenizer"),
    }
    let path = source.path;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

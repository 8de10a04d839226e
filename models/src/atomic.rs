//! Folders written atomically: filled under a temporary name next to their destination, synced,
//! then renamed into place. A reader (or a resumed run) sees the old folder or the complete new
//! one, never half of one; a crash mid-write leaves only a temporary folder, which the next write
//! of the same destination removes.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Writes the folder `out` with `fill(temporary)`, then renames it into place. An existing `out`
/// is replaced when `replace` allows it (it is given the folder), and refused otherwise. When
/// `fill` fails, nothing at `out` changes and the temporary folder is removed.
pub fn write_dir(
    out: &Path,
    replace: impl FnOnce(&Path) -> Result<bool>,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let (parent, name) = split(out)?;
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    if out.exists() {
        if !out.is_dir() {
            return Err(Error::Invalid(format!(
                "{}: exists and is not a folder; refusing to overwrite it",
                out.display()
            )));
        }
        if !replace(out)? {
            return Err(Error::Invalid(format!(
                "{}: exists; refusing to overwrite it",
                out.display()
            )));
        }
    }
    let temp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if temp.exists() {
        std::fs::remove_dir_all(&temp).map_err(|e| Error::io(&temp, e))?;
    }
    std::fs::create_dir(&temp).map_err(|e| Error::io(&temp, e))?;
    let written = fill(&temp)
        .and_then(|()| sync_tree(&temp))
        .and_then(|()| swap_into_place(&temp, out, &parent, &name));
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    written?;
    if let Ok(dir) = File::open(&parent) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// `out`'s parent folder (`.` for a bare name) and its file name.
fn split(out: &Path) -> Result<(PathBuf, String)> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Invalid(format!("{}: not a folder name", out.display())))?;
    Ok((parent, name))
}

/// Moves `temp` to `out`; an existing `out` is moved aside first and removed after, so at every
/// instant one complete folder is at `out` or about to be renamed there.
fn swap_into_place(temp: &Path, out: &Path, parent: &Path, name: &str) -> Result<()> {
    if !out.exists() {
        return std::fs::rename(temp, out).map_err(|e| Error::io(out, e));
    }
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
    if let Err(e) = std::fs::rename(temp, out) {
        let _ = std::fs::rename(&old, out);
        return Err(Error::io(out, e));
    }
    std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))
}

/// Flushes every file of the folder (one level; the folders written here are flat, and nested
/// ones are synced by the same call on them) and the folder itself to disk.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(&path, e))?;
        }
    }
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Writes `text` to `path` through a temporary file in the same folder and a rename.
pub fn write_file(path: &Path, text: &[u8]) -> Result<()> {
    let (parent, name) = split(path)?;
    let temp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = std::fs::write(&temp, text)
        .and_then(|()| File::open(&temp).and_then(|f| f.sync_all()))
        .and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

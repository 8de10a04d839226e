//! Reading records from a dataset file in batches: JSON Lines (each line checked for UTF-8 and
//! parsed, blank lines skipped) or Parquet (each row as a JSON object, through the `parquet`
//! crate). A batch is parsed in parallel; records keep their file order and their line or row.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::SerializedFileReader;
use rayon::prelude::*;
use serde_json::{Map, Value};

use super::records::{Invalid, InvalidKind};
use crate::{Error, Result};

/// Where a record is: a line of a JSONL file or a row of a Parquet file (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Line(u64),
    Row(u64),
}

impl Place {
    /// `path:line` or `path: row N`, as errors print it.
    pub fn locate(self, path: &Path) -> String {
        match self {
            Place::Line(n) => format!("{}:{n}", path.display()),
            Place::Row(n) => format!("{}: row {n}", path.display()),
        }
    }
}

/// One record, parsed or not.
pub type Record = (Place, std::result::Result<Map<String, Value>, Invalid>);

/// About this many bytes of records are parsed at once.
const BATCH_BYTES: usize = 4 << 20;
/// Parquet rows read at once.
const BATCH_ROWS: usize = 4096;

/// A dataset file read batch by batch.
pub enum Source {
    Jsonl {
        reader: BufReader<File>,
        line: u64,
        bytes: u64,
    },
    Parquet {
        rows: Box<dyn Iterator<Item = parquet::errors::Result<parquet::record::Row>>>,
        row: u64,
        rows_total: u64,
        path: String,
    },
}

/// Whether `path` is a Parquet file: its extension, or the `PAR1` magic.
fn is_parquet(path: &Path) -> Result<bool> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
    {
        return Ok(true);
    }
    let mut magic = [0u8; 4];
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let n = file.read(&mut magic).map_err(|e| Error::io(path, e))?;
    Ok(n == 4 && &magic == b"PAR1")
}

impl Source {
    /// Opens `path` as Parquet (by extension or magic) or JSON Lines.
    pub fn open(path: &Path) -> Result<Source> {
        if is_parquet(path)? {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            let reader = SerializedFileReader::new(file).map_err(|e| {
                Error::format(
                    path.display().to_string(),
                    format!("not a readable Parquet file: {e}"),
                )
            })?;
            let rows_total = reader.metadata().file_metadata().num_rows().max(0) as u64;
            return Ok(Source::Parquet {
                rows: Box::new(reader.into_iter()),
                row: 0,
                rows_total,
                path: path.display().to_string(),
            });
        }
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(Source::Jsonl {
            reader: BufReader::with_capacity(1 << 20, file),
            line: 0,
            bytes: 0,
        })
    }

    /// How far reading has got, in bytes of a file of `total` bytes (Parquet: estimated from
    /// the rows read).
    pub fn position(&self, total: u64) -> u64 {
        match self {
            Source::Jsonl { bytes, .. } => (*bytes).min(total),
            Source::Parquet {
                row, rows_total, ..
            } => {
                if *rows_total == 0 {
                    total
                } else {
                    (total as u128 * (*row).min(*rows_total) as u128 / *rows_total as u128) as u64
                }
            }
        }
    }

    /// The next batch of records (empty at the end of the file).
    pub fn next_batch(&mut self, path: &Path) -> Result<Vec<Record>> {
        match self {
            Source::Jsonl {
                reader,
                line,
                bytes: read,
            } => {
                let mut lines: Vec<(u64, Vec<u8>)> = Vec::new();
                let mut bytes = 0;
                while bytes < BATCH_BYTES {
                    let mut buf = Vec::new();
                    let n = reader
                        .read_until(b'\n', &mut buf)
                        .map_err(|e| Error::io(path, e))?;
                    if n == 0 {
                        break;
                    }
                    *line += 1;
                    bytes += n;
                    *read += n as u64;
                    if buf.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    lines.push((*line, buf));
                }
                Ok(lines
                    .into_par_iter()
                    .map(|(n, bytes)| (Place::Line(n), parse_line(&bytes)))
                    .collect())
            }
            Source::Parquet {
                rows, row, path, ..
            } => {
                let mut out = Vec::new();
                for next in rows.by_ref().take(BATCH_ROWS) {
                    *row += 1;
                    let row_value = next.map_err(|e| {
                        Error::format(format!("{path}: row {row}"), format!("cannot read: {e}"))
                    })?;
                    let value = match row_value.to_json_value() {
                        Value::Object(map) => Ok(map),
                        _ => Err(Invalid {
                            kind: InvalidKind::Field,
                            message: "a row that is not a record".into(),
                        }),
                    };
                    out.push((Place::Row(*row), value));
                }
                Ok(out)
            }
        }
    }
}

/// A JSONL line as an object.
fn parse_line(bytes: &[u8]) -> std::result::Result<Map<String, Value>, Invalid> {
    let text = std::str::from_utf8(bytes).map_err(|e| Invalid {
        kind: InvalidKind::NotUtf8,
        message: format!("not UTF-8 (byte {} of the line)", e.valid_up_to() + 1),
    })?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Invalid {
            kind: InvalidKind::Field,
            message: "expected a JSON object".into(),
        }),
        Err(e) => Err(Invalid {
            kind: InvalidKind::NotJson,
            message: format!("not JSON: {e}"),
        }),
    }
}

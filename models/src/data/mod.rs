//! Datasets: JSON Lines or Parquet files of text, prompt/completion, chat (`messages`) or
//! pre-tokenized records, turned into token examples with their loss masks — in parallel, in
//! batches (a file larger than memory streams through), into a [`TokenStore`] that is cached on
//! disk under a key of the data's, the tokenizer's and the options' contents, so a second run
//! or a restart does not tokenize again.
//!
//! Every problem names the file and the line (or Parquet row); `skip_invalid` skips such
//! records instead and counts them by kind.

mod cache;
mod records;
mod source;
mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use cache::{cache_key, default_cache_dir};
pub use records::{Converter, Format, Invalid, InvalidKind};
pub use store::{StoreFile, StoreWriter, TokenStore};

use crate::batch::Sequence;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use source::Source;

/// How records become examples.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DataOptions {
    /// The format every record must have (default: detected from the first record).
    pub format: Option<Format>,
    /// Prompt and non-assistant tokens are targets too.
    pub train_on_prompt: bool,
    /// Skip invalid records (counted by kind) instead of stopping at the first.
    pub skip_invalid: bool,
}

/// What reading a dataset found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataReport {
    /// The file's format (`None` only when every record was skipped).
    pub format: Option<Format>,
    /// Records read (blank lines are not records).
    pub records: usize,
    /// Examples made from them.
    pub examples: usize,
    /// Tokens of the examples.
    pub tokens: usize,
    /// Of them, targets (before the shift: first tokens of examples included).
    pub targets: usize,
    /// Skipped records by kind (with `skip_invalid`).
    pub skipped: BTreeMap<String, usize>,
    /// The first skipped record's location and problem.
    pub first_skipped: Option<String>,
    /// Whether the examples came from the cache.
    #[serde(skip)]
    pub cached: bool,
}

impl DataReport {
    /// Records skipped in all.
    pub fn skipped_total(&self) -> usize {
        self.skipped.values().sum()
    }
}

/// Progress of reading a dataset: bytes of the file read so far, of how many.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub bytes: u64,
    pub total: u64,
    pub records: usize,
}

/// What to read a dataset with.
pub struct DataSource<'a> {
    pub path: &'a Path,
    pub tokenizer: Option<&'a Tokenizer>,
    pub vocab: usize,
    pub options: &'a DataOptions,
}

/// Reads the dataset into a store in memory (small files: tests, evaluation sets).
pub fn load_in_memory(source: &DataSource<'_>) -> Result<(TokenStore, DataReport)> {
    let mut writer = StoreWriter::new(std::io::Cursor::new(Vec::new()));
    let report = read(
        source,
        &mut |s| writer.push(s).map_err(|e| Error::io(source.path, e)),
        &mut |_| {},
    )?;
    let note = serde_json::to_string(&report).unwrap_or_default();
    let bytes = writer
        .finish(&note)
        .map_err(|e| Error::io(source.path, e))?
        .into_inner();
    Ok((TokenStore::from_bytes(bytes)?, report))
}

/// The dataset's examples as plain sequences (small files).
pub fn load_sequences(source: &DataSource<'_>) -> Result<(Vec<Sequence>, DataReport)> {
    let (store, report) = load_in_memory(source)?;
    Ok(((0..store.len()).map(|i| store.example(i)).collect(), report))
}

/// Reads the dataset into the store of `cache_dir` that its key names, unless that store
/// exists already (then nothing is tokenized: `report.cached`). `progress` is called after
/// every batch.
pub fn load_cached(
    source: &DataSource<'_>,
    cache_dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(TokenStore, DataReport, PathBuf)> {
    let key = cache_key(source)?;
    let path = cache_dir.join(format!("{key}.tokens"));
    if path.exists() {
        if let Ok(store) = TokenStore::open(&path) {
            if let Ok(mut report) = serde_json::from_str::<DataReport>(store.note()) {
                report.cached = true;
                return Ok((store, report, path));
            }
        }
        // An unreadable cache entry (another version, a damaged disk) is rebuilt.
    }
    let mut file = StoreFile::create(&path)?;
    let report = match read(source, &mut |s| file.push(s), progress) {
        Ok(report) => report,
        Err(e) => {
            file.abandon();
            return Err(e);
        }
    };
    let note = serde_json::to_string(&report).unwrap_or_default();
    let store = file.finish(&note)?;
    Ok((store, report, path))
}

/// Reads every record of the file, converting batches in parallel and handing the examples to
/// `sink` in file order.
fn read(
    source: &DataSource<'_>,
    sink: &mut dyn FnMut(&Sequence) -> Result<()>,
    progress: &mut dyn FnMut(Progress),
) -> Result<DataReport> {
    let path = source.path;
    let total = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    let mut input = Source::open(path)?;
    let converter = Converter {
        tokenizer: source.tokenizer,
        vocab: source.vocab,
        train_on_prompt: source.options.train_on_prompt,
    };
    let mut report = DataReport {
        format: source.options.format,
        ..DataReport::default()
    };
    // Where the file's format was decided, for the error when a later record differs.
    let mut decided_at: Option<String> = None;
    loop {
        let batch = input.next_batch(path)?;
        if batch.is_empty() {
            break;
        }
        // Formats are decided in file order (the first record decides); conversion, the
        // tokenizer's work, runs in parallel.
        let mut formats = Vec::with_capacity(batch.len());
        for (place, record) in &batch {
            report.records += 1;
            let Ok(record) = record else {
                formats.push(None);
                continue;
            };
            let detected = Format::detect(record);
            let format = match (report.format, detected) {
                (Some(forced), _) if source.options.format.is_some() => forced,
                (None, Some(d)) => {
                    report.format = Some(d);
                    decided_at = Some(place.locate(path));
                    d
                }
                (Some(file), Some(d)) if d != file => {
                    return Err(Error::format(
                        place.locate(path),
                        format!(
                            "a {d} record in a {file} file (the format of {}); a file holds \
                             one format",
                            decided_at.as_deref().unwrap_or("the first record")
                        ),
                    ))
                }
                (Some(file), _) => file,
                (None, None) => {
                    formats.push(None);
                    continue;
                }
            };
            formats.push(Some(format));
        }
        let examples: Vec<std::result::Result<Sequence, Invalid>> = batch
            .par_iter()
            .zip(formats.par_iter())
            .map(|((_, record), format)| {
                let record = record.as_ref().map_err(Clone::clone)?;
                let Some(format) = *format else {
                    return Err(Invalid {
                        kind: InvalidKind::Field,
                        message: format!(
                            "no known fields (expected `text`, `prompt` and `completion`, \
                             `messages`, or `input_ids`; found {})",
                            record
                                .keys()
                                .map(|k| format!("`{k}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    });
                };
                records::check_keys(record, format)?;
                converter.convert(record, format)
            })
            .collect();
        for ((place, _), example) in batch.iter().zip(examples) {
            match example {
                Ok(seq) => {
                    report.examples += 1;
                    report.tokens += seq.input_ids.len();
                    report.targets += seq.labels.as_ref().map_or(seq.input_ids.len(), |l| {
                        l.iter()
                            .filter(|&&l| l != crate::batch::IGNORE_INDEX)
                            .count()
                    });
                    sink(&seq)?;
                }
                Err(invalid) if source.options.skip_invalid => {
                    *report
                        .skipped
                        .entry(invalid.kind.describe().to_string())
                        .or_default() += 1;
                    if report.first_skipped.is_none() {
                        report.first_skipped =
                            Some(format!("{}: {}", place.locate(path), invalid.message));
                    }
                }
                Err(invalid) => {
                    return Err(Error::format(place.locate(path), invalid.message));
                }
            }
        }
        progress(Progress {
            bytes: input.position(total),
            total,
            records: report.records,
        });
    }
    if report.records == 0 {
        return Err(Error::format(
            path.display().to_string(),
            "no records (the file is empty)",
        ));
    }
    if report.examples == 0 {
        return Err(Error::format(
            path.display().to_string(),
            format!(
                "no usable record: all {} were skipped ({})",
                report.records,
                report.first_skipped.as_deref().unwrap_or("")
            ),
        ));
    }
    Ok(report)
}

//! Reading sequences from JSON Lines files: `{"input_ids": [...]}` (optionally with
//! `"labels"`, aligned with `input_ids`, `-100` ignored), used exactly as given, or
//! `{"text": "..."}`, tokenized. Every error names the file and the line.

use std::path::Path;

use serde_json::Value;

use crate::batch::{Sequence, IGNORE_INDEX};
use crate::{Error, Result};

/// Turns a `text` line into token ids.
pub type Tokenize<'a> = &'a dyn Fn(&str) -> Result<Vec<u32>>;

/// The sequences of a JSONL file, in order. `tokenize` turns a `text` line into ids; without
/// one, a `text` line is an error. Blank lines are skipped. Every id and label must be below
/// `vocab` (labels may also be -100).
pub fn read_jsonl(
    path: &Path,
    tokenize: Option<Tokenize<'_>>,
    vocab: usize,
) -> Result<Vec<Sequence>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let value: Value =
            serde_json::from_str(line).map_err(|e| Error::format(&at, format!("not JSON: {e}")))?;
        let seq = sequence(&value, &at, tokenize)?;
        check_vocab(&seq, &at, vocab)?;
        out.push(seq);
    }
    if out.is_empty() {
        return Err(Error::format(path.display().to_string(), "no sequences"));
    }
    Ok(out)
}

fn sequence(value: &Value, at: &str, tokenize: Option<Tokenize<'_>>) -> Result<Sequence> {
    let object = value
        .as_object()
        .ok_or_else(|| Error::format(at, "expected a JSON object"))?;
    if let Some(ids) = object.get("input_ids") {
        let input_ids = integers(ids, at, "input_ids")?
            .into_iter()
            .map(|id| {
                u32::try_from(id).map_err(|_| {
                    Error::format(at, format!("`input_ids` holds {id}, not a token id"))
                })
            })
            .collect::<Result<Vec<u32>>>()?;
        let labels = match object.get("labels") {
            None | Some(Value::Null) => None,
            Some(labels) => {
                let labels = integers(labels, at, "labels")?
                    .into_iter()
                    .map(|l| {
                        i32::try_from(l)
                            .map_err(|_| Error::format(at, format!("`labels` holds {l}")))
                    })
                    .collect::<Result<Vec<i32>>>()?;
                if labels.len() != input_ids.len() {
                    return Err(Error::format(
                        at,
                        format!(
                            "{} labels for {} input_ids (labels are aligned with input_ids)",
                            labels.len(),
                            input_ids.len()
                        ),
                    ));
                }
                Some(labels)
            }
        };
        if input_ids.is_empty() {
            return Err(Error::format(at, "`input_ids` is empty"));
        }
        return Ok(Sequence { input_ids, labels });
    }
    if let Some(text) = object.get("text") {
        let text = text
            .as_str()
            .ok_or_else(|| Error::format(at, "`text` must be a string"))?;
        let tokenize = tokenize.ok_or_else(|| {
            Error::format(
                at,
                "a `text` line needs a tokenizer (the model folder has none)",
            )
        })?;
        let input_ids = tokenize(text).map_err(|e| Error::format(at, e.to_string()))?;
        if input_ids.is_empty() {
            return Err(Error::format(at, "`text` tokenizes to nothing"));
        }
        return Ok(Sequence::new(input_ids));
    }
    Err(Error::format(
        at,
        "expected `input_ids` (with optional `labels`) or `text`",
    ))
}

fn integers(value: &Value, at: &str, key: &str) -> Result<Vec<i64>> {
    let array = value
        .as_array()
        .ok_or_else(|| Error::format(at, format!("`{key}` must be an array of integers")))?;
    array
        .iter()
        .map(|v| {
            v.as_i64()
                .ok_or_else(|| Error::format(at, format!("`{key}` holds {v}, not an integer")))
        })
        .collect()
}

/// Refuses ids and labels the model cannot embed or predict.
fn check_vocab(seq: &Sequence, at: &str, vocab: usize) -> Result<()> {
    if let Some((t, id)) = seq
        .input_ids
        .iter()
        .enumerate()
        .find(|(_, &id)| id as usize >= vocab)
    {
        return Err(Error::format(
            at,
            format!("input_ids[{t}] = {id} is outside the vocabulary of {vocab}"),
        ));
    }
    let labels = seq.labels.iter().flatten().enumerate();
    if let Some((t, l)) = labels
        .into_iter()
        .find(|(_, &l)| l != IGNORE_INDEX && !(0..vocab as i64).contains(&(l as i64)))
    {
        return Err(Error::format(
            at,
            format!("labels[{t}] = {l} is neither -100 nor a token id below {vocab}"),
        ));
    }
    Ok(())
}

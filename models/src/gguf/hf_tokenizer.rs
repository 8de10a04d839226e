//! A Hugging Face folder's tokenizer (`tokenizer.json`, `tokenizer_config.json`,
//! `config.json`, `chat_template.jinja`) as GGUF `tokenizer.*` metadata, the way llama.cpp's
//! convert_hf_to_gguf.py writes a byte-level BPE vocabulary (`tokenizer.ggml.model` `gpt2`);
//! the inverse of [`super::build_tokenizer`].
//!
//! - `tokenizer.ggml.pre` names the pre-tokenizer: it is recognised from `tokenizer.json`'s
//!   `pre_tokenizer` (llama.cpp recognises it by hashing the tokens of a test text; the splits
//!   Kiln knows are the ones its import rebuilds).
//! - Tokens in id order, one per id of the model's vocabulary (`config.json` `vocab_size`):
//!   ids the tokenizer lacks become `[PAD<id>]` (type unused), added tokens are control
//!   tokens when special (or when they look special, `<|...|>`, as llama.cpp decides), user
//!   defined otherwise; the rest are normal.
//! - Merges as `"a b"` (a space inside a part of the newer pair format encoded as `Ġ`, as
//!   gguf's `SpecialVocab` does).
//! - Special token ids from `tokenizer_config.json`'s `*_token` (looked up among the added
//!   tokens), else `config.json`'s `*_token_id`; `add_bos_token` / `add_eos_token` from the
//!   post-processor's template, overridden by `tokenizer_config.json`; the chat template from
//!   `tokenizer_config.json` or `chat_template.jinja`.

use std::path::Path;

use serde_json::Value;

use super::metadata::MetadataValue;
use super::tokenizer::{LLAMA3_SPLIT, QWEN2_SPLIT};
use crate::{Error, Result};

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The pre-tokenizers recognised, for error messages.
const SUPPORTED: &str = "GPT-2's byte-level split (gpt2), SmolLM's digits + byte-level \
                         (smollm), Qwen2's split (qwen2), Llama 3's split (llama-bpe)";

/// The tokenizer of a model folder as GGUF metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizerMetadata {
    /// The `tokenizer.*` pairs, in the order llama.cpp writes them.
    pub entries: Vec<(String, MetadataValue)>,
    /// `tokenizer.ggml.model`.
    pub model: String,
    /// `tokenizer.ggml.pre`.
    pub pre: String,
    /// The number of tokens (the model's vocabulary), of which `padded` were made up for ids
    /// the tokenizer does not have.
    pub tokens: usize,
    pub padded: usize,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::format(path.display().to_string(), format!("invalid JSON: {e}")))
}

/// The tokenizer metadata of the model folder `dir` for a vocabulary of `vocab_size` ids, or
/// `None` when the folder has no `tokenizer.json`.
pub fn tokenizer_metadata(dir: &Path, vocab_size: usize) -> Result<Option<TokenizerMetadata>> {
    let path = dir.join("tokenizer.json");
    let Some(tokenizer) = read_json(&path)? else {
        return Ok(None);
    };
    let at = path.display().to_string();
    let model = &tokenizer["model"];
    let kind = model["type"].as_str().unwrap_or("(none)");
    if kind != "BPE" {
        return Err(Error::unsupported(
            &at,
            format!("model type `{kind}`: GGUF export writes byte-level BPE vocabularies (gpt2)"),
        ));
    }
    let pre = pre_tokenizer(&tokenizer["pre_tokenizer"]).ok_or_else(|| {
        Error::unsupported(
            &at,
            format!(
                "pre-tokenizer {}: GGUF export writes byte-level BPE vocabularies (gpt2) whose \
                 split Kiln recognises ({SUPPORTED})",
                tokenizer["pre_tokenizer"]
            ),
        )
    })?;

    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut types = vec![NORMAL; vocab_size];
    let mut place = |id: &Value, token: &str, what: &str| -> Result<usize> {
        let id = id.as_u64().ok_or_else(|| {
            Error::format(&at, format!("{what} `{token}`: the id is not a number"))
        })? as usize;
        if id >= vocab_size {
            return Err(Error::format(
                &at,
                format!(
                    "{what} `{token}` has id {id}, past the model's vocabulary of {vocab_size} \
                     (config.json `vocab_size`)"
                ),
            ));
        }
        tokens[id] = Some(token.to_string());
        Ok(id)
    };
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| Error::format(&at, "`model.vocab` is not an object"))?;
    for (token, id) in vocab {
        place(id, token, "token")?;
    }
    let added = tokenizer["added_tokens"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for t in &added {
        let content = t["content"]
            .as_str()
            .ok_or_else(|| Error::format(&at, format!("added token {t} has no content")))?;
        let id = place(&t["id"], content, "added token")?;
        let special = t["special"].as_bool().unwrap_or(false);
        types[id] = if special || looks_special(content) {
            CONTROL
        } else {
            USER_DEFINED
        };
    }
    let mut padded = 0;
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = UNUSED;
                padded += 1;
                format!("[PAD{i}]")
            })
        })
        .collect();
    let merges = merges(&model["merges"], &at)?;

    let config_path = dir.join("tokenizer_config.json");
    let config = read_json(&config_path)?.unwrap_or(Value::Null);
    let model_config = read_json(&dir.join("config.json"))?.unwrap_or(Value::Null);
    let content_of = |key: &str| -> Option<String> {
        match &config[key] {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
            _ => None,
        }
    };
    let mut ids: Vec<(&str, usize)> = vec![];
    for (typ, key) in [
        ("bos", "tokenizer.ggml.bos_token_id"),
        ("eos", "tokenizer.ggml.eos_token_id"),
        ("unk", "tokenizer.ggml.unknown_token_id"),
        ("sep", "tokenizer.ggml.seperator_token_id"),
        ("pad", "tokenizer.ggml.padding_token_id"),
    ] {
        let from_config = content_of(&format!("{typ}_token")).and_then(|c| {
            added
                .iter()
                .find(|t| t["content"].as_str() == Some(c.as_str()))
                .and_then(|t| t["id"].as_u64())
        });
        let id = from_config.or_else(|| model_config[format!("{typ}_token_id")].as_u64());
        if let Some(id) = id.map(|i| i as usize).filter(|&i| i < vocab_size) {
            ids.push((key, id));
        }
    }

    let (mut add_bos, mut add_eos) = template_adds(
        &tokenizer["post_processor"],
        content_of("bos_token").as_deref(),
        content_of("eos_token").as_deref(),
    );
    if let Some(b) = config["add_bos_token"].as_bool() {
        add_bos = Some(b);
    }
    if let Some(b) = config["add_eos_token"].as_bool() {
        add_eos = Some(b);
    }

    let string = |s: &str| MetadataValue::String(s.to_string());
    let strings = |v: &[String]| MetadataValue::Array(v.iter().map(|s| string(s)).collect());
    let mut entries = vec![
        ("tokenizer.ggml.model".to_string(), string("gpt2")),
        ("tokenizer.ggml.pre".to_string(), string(pre)),
        ("tokenizer.ggml.tokens".to_string(), strings(&tokens)),
        (
            "tokenizer.ggml.token_type".to_string(),
            MetadataValue::Array(types.iter().map(|&t| MetadataValue::I32(t)).collect()),
        ),
    ];
    if !merges.is_empty() {
        entries.push(("tokenizer.ggml.merges".to_string(), strings(&merges)));
    }
    for (key, id) in ids {
        entries.push((key.to_string(), MetadataValue::U32(id as u32)));
    }
    for (key, flag) in [
        ("tokenizer.ggml.add_bos_token", add_bos),
        ("tokenizer.ggml.add_eos_token", add_eos),
    ] {
        if let Some(flag) = flag {
            entries.push((key.to_string(), MetadataValue::Bool(flag)));
        }
    }
    entries.extend(chat_templates(dir, &config, &config_path)?);
    Ok(Some(TokenizerMetadata {
        entries,
        model: "gpt2".into(),
        pre: pre.into(),
        tokens: tokens.len(),
        padded,
    }))
}

/// llama.cpp's `does_token_look_special`: added tokens some models forget to mark special.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// A `ByteLevel` step with its `use_regex` (default true).
fn byte_level(step: &Value) -> Option<bool> {
    (step["type"] == "ByteLevel").then(|| step["use_regex"].as_bool().unwrap_or(true))
}

/// `tokenizer.ggml.pre` for a byte-level `pre_tokenizer`, if Kiln recognises it.
fn pre_tokenizer(p: &Value) -> Option<&'static str> {
    if byte_level(p) == Some(true) {
        return Some("gpt2");
    }
    if p["type"] != "Sequence" {
        return None;
    }
    let steps = p["pretokenizers"].as_array()?;
    match steps.as_slice() {
        [digits, bl]
            if digits["type"] == "Digits"
                && digits["individual_digits"] == true
                && byte_level(bl) == Some(true) =>
        {
            Some("smollm")
        }
        [split, bl] if split["type"] == "Split" && byte_level(bl) == Some(false) => {
            match split["pattern"]["Regex"].as_str()? {
                QWEN2_SPLIT => Some("qwen2"),
                LLAMA3_SPLIT => Some("llama-bpe"),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `model.merges` as `"a b"` strings (either of tokenizer.json's two formats).
fn merges(v: &Value, at: &str) -> Result<Vec<String>> {
    let Some(list) = v.as_array() else {
        return Err(Error::format(
            at,
            "`model.merges` is missing (a BPE model has merges)",
        ));
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(pair) if pair.len() == 2 => {
                let part = |p: &Value| {
                    p.as_str()
                        .map(|s| s.replace(' ', "\u{120}"))
                        .ok_or_else(|| Error::format(at, format!("merge {i} is not two strings")))
                };
                Ok(format!("{} {}", part(&pair[0])?, part(&pair[1])?))
            }
            _ => Err(Error::format(
                at,
                format!("merge {i} is not a pair of tokens"),
            )),
        })
        .collect()
}

/// Whether the post-processor's `TemplateProcessing` adds `bos` before and `eos` after a
/// single sequence (`None` where it says nothing), as gguf's `SpecialVocab` reads it.
fn template_adds(
    post: &Value,
    bos: Option<&str>,
    eos: Option<&str>,
) -> (Option<bool>, Option<bool>) {
    let processors = match post["processors"].as_array() {
        Some(list) => list.clone(),
        None => vec![post.clone()],
    };
    let (mut add_bos, mut add_eos) = (None, None);
    for p in processors
        .iter()
        .filter(|p| p["type"] == "TemplateProcessing")
    {
        let single = p["single"].as_array().cloned().unwrap_or_default();
        if single.len() < 2 {
            continue;
        }
        let special = |v: &Value| v["SpecialToken"]["id"].as_str().map(str::to_string);
        if let Some(first) = special(&single[0]) {
            add_bos = Some(Some(first.as_str()) == bos);
        }
        if let Some(last) = special(&single[single.len() - 1]) {
            add_eos = Some(Some(last.as_str()) == eos);
        }
    }
    (add_bos, add_eos)
}

/// `tokenizer.chat_template` (and `tokenizer.chat_template.NAME` for named templates), as
/// gguf's `add_chat_template` writes them.
fn chat_templates(
    dir: &Path,
    config: &Value,
    config_path: &Path,
) -> Result<Vec<(String, MetadataValue)>> {
    let template = match &config["chat_template"] {
        Value::Null => {
            let jinja = dir.join("chat_template.jinja");
            if jinja.is_file() {
                Value::String(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?)
            } else {
                return Ok(vec![]);
            }
        }
        other => other.clone(),
    };
    let mut out = vec![];
    match template {
        Value::String(s) => out.push(("tokenizer.chat_template".into(), MetadataValue::String(s))),
        Value::Array(choices) => {
            let mut default = None;
            let mut names = vec![];
            for c in &choices {
                let name: String = c["name"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
                    .collect();
                let Some(t) = c["template"].as_str() else {
                    continue;
                };
                if name == "default" {
                    default = Some(t.to_string());
                } else if !name.is_empty() {
                    out.push((
                        format!("tokenizer.chat_template.{name}"),
                        MetadataValue::String(t.to_string()),
                    ));
                    names.push(MetadataValue::String(name));
                }
            }
            if !names.is_empty() {
                out.push((
                    "tokenizer.chat_templates".into(),
                    MetadataValue::Array(names),
                ));
            }
            if let Some(t) = default {
                out.push(("tokenizer.chat_template".into(), MetadataValue::String(t)));
            }
        }
        other => {
            return Err(Error::format(
                config_path.display().to_string(),
                format!("key `chat_template`: expected a string or a list, found {other}"),
            ))
        }
    }
    Ok(out)
}

//! A Hugging Face `tokenizer.json` and `tokenizer_config.json` rebuilt from a GGUF file's
//! `tokenizer.ggml.*` metadata and `tokenizer.chat_template`.
//!
//! Two vocabulary kinds (`tokenizer.ggml.model`):
//! - `gpt2`: byte-level BPE. The tokens are already spelled in GPT-2's byte alphabet and the
//!   merges are given; the pre-tokenizer is chosen from `tokenizer.ggml.pre` (the split
//!   llama.cpp applies for that name).
//! - `llama`: SentencePiece vocabularies (tokens with `▁` for spaces, scores, `<0xNN>` byte
//!   tokens) as a BPE model with byte fallback, the way Hugging Face's `LlamaTokenizerFast`
//!   has them (a Metaspace pre-tokenizer); merges come from the file or are derived from the
//!   vocabulary and scores.
//!
//! Tokens typed control (3) become special added tokens, user-defined (4) plain added tokens.

use super::metadata::Metadata;
use super::reader::GgufFile;
use crate::{Error, Result};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TYPE_CONTROL: i128 = 3;
const TYPE_USER_DEFINED: i128 = 4;

/// The split of Qwen2's tokenizer (llama.cpp's `qwen2` pre-tokenizer).
pub(super) const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The split of Llama 3's tokenizer (llama.cpp's `llama-bpe`): digits in runs of up to three.
pub(super) const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` values Kiln rebuilds, for error messages.
const SUPPORTED_PRE: &str =
    "gpt2, smollm, qwen2, deepseek-r1-qwen, llama-bpe, llama3, llama-v3, smaug-bpe, dbrx";

/// The tokenizer files of a GGUF model.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTokenizer {
    /// The contents of `tokenizer.json`.
    pub tokenizer_json: Value,
    /// The contents of `tokenizer_config.json` (with `chat_template` when the file has one).
    pub tokenizer_config: Value,
    /// The vocabulary kind (`gpt2` or `llama`).
    pub model: String,
    /// The number of tokens.
    pub vocab_size: usize,
    pub bos_token_id: Option<usize>,
    pub eos_token_id: Option<usize>,
    pub pad_token_id: Option<usize>,
    pub chat_template: Option<String>,
}

/// GPT-2's byte-to-character map: printable Latin-1 bytes stand for themselves, the others
/// (controls, space, 0x7f–0xa0, 0xad) for the characters from U+0100 on, in byte order.
fn byte_alphabet() -> HashSet<char> {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut next = 0x100;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b)
            } else {
                next += 1;
                char::from_u32(next - 1)
            }
        })
        .map(|c| c.expect("a valid char"))
        .collect()
}

/// Reads the tokenizer of `file` and rebuilds it as Hugging Face files.
pub fn build(file: &GgufFile) -> Result<GgufTokenizer> {
    let md = file.metadata();
    let model_key = "tokenizer.ggml.model";
    let model = md
        .get_str(model_key)?
        .ok_or_else(|| md.error(model_key, "missing: the file has no tokenizer"))?
        .to_string();
    let tokens = md
        .get_str_array("tokenizer.ggml.tokens")?
        .ok_or_else(|| md.error("tokenizer.ggml.tokens", "missing"))?;
    if tokens.is_empty() {
        return Err(md.error("tokenizer.ggml.tokens", "the vocabulary is empty"));
    }
    let types = match md.get_i128_array("tokenizer.ggml.token_type")? {
        Some(t) if t.len() == tokens.len() => t,
        Some(t) => {
            return Err(md.error(
                "tokenizer.ggml.token_type",
                format!("{} types for {} tokens", t.len(), tokens.len()),
            ))
        }
        None => vec![1; tokens.len()],
    };
    let id = |key: &str| -> Result<Option<usize>> {
        match md.get_usize(key)? {
            Some(i) if i >= tokens.len() => Err(md.error(
                key,
                format!("token id {i} is past the vocabulary of {}", tokens.len()),
            )),
            other => Ok(other),
        }
    };
    let bos = id("tokenizer.ggml.bos_token_id")?;
    let eos = id("tokenizer.ggml.eos_token_id")?;
    let unk = id("tokenizer.ggml.unknown_token_id")?;
    let pad = id("tokenizer.ggml.padding_token_id")?;
    let chat_template = md.get_str("tokenizer.chat_template")?.map(str::to_string);
    let add_eos = md
        .get_bool("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);

    let (mut tokenizer, add_bos) = match model.as_str() {
        "gpt2" => (
            byte_level(md, &tokens)?,
            md.get_bool("tokenizer.ggml.add_bos_token")?
                .unwrap_or(false),
        ),
        "llama" => (
            sentencepiece(md, &tokens, unk)?,
            // llama.cpp adds BOS to SentencePiece vocabularies unless the file says otherwise.
            md.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(true),
        ),
        other => {
            return Err(Error::unsupported(
                format!("{}: key `{model_key}`", md.path()),
                format!("tokenizer model `{other}` is not supported (gpt2 and llama are)"),
            ))
        }
    };

    let alphabet = (model == "gpt2").then(byte_alphabet);
    let mut added = vec![];
    for (i, (&token, &ty)) in tokens.iter().zip(&types).enumerate() {
        let special = ty == TYPE_CONTROL;
        if !special && ty != TYPE_USER_DEFINED {
            continue;
        }
        // A byte-level vocabulary spells every real token in the byte alphabet; a control
        // token outside it is a mislabelled entry that no text can produce (as transformers).
        if special
            && alphabet
                .as_ref()
                .is_some_and(|a| !token.chars().all(|c| a.contains(&c)))
        {
            continue;
        }
        added.push(json!({
            "id": i, "content": token, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": special,
        }));
    }
    tokenizer["added_tokens"] = Value::Array(added.clone());
    tokenizer["post_processor"] = post_processor(
        &tokens,
        add_bos.then_some(bos).flatten(),
        add_eos.then_some(eos).flatten(),
    );

    let name = |i: Option<usize>| i.map(|i| tokens[i].to_string());
    let mut config = Map::new();
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    config.insert("add_bos_token".into(), json!(add_bos));
    config.insert("add_eos_token".into(), json!(add_eos));
    config.insert("bos_token".into(), json!(name(bos)));
    config.insert("eos_token".into(), json!(name(eos)));
    config.insert("unk_token".into(), json!(name(unk)));
    config.insert("pad_token".into(), json!(name(pad)));
    config.insert("clean_up_tokenization_spaces".into(), json!(false));
    config.insert(
        "model_max_length".into(),
        json!(1_000_000_000_000_000_000u64),
    );
    let decoder: Map<String, Value> = added
        .iter()
        .map(|t| (t["id"].to_string(), t.clone()))
        .collect();
    config.insert("added_tokens_decoder".into(), Value::Object(decoder));
    if let Some(t) = &chat_template {
        config.insert("chat_template".into(), json!(t));
    }
    Ok(GgufTokenizer {
        tokenizer_json: tokenizer,
        tokenizer_config: Value::Object(config),
        model,
        vocab_size: tokens.len(),
        bos_token_id: bos,
        eos_token_id: eos,
        pad_token_id: pad,
        chat_template,
    })
}

/// The vocabulary as a JSON object, the first id of a token kept when a file repeats it.
fn vocab(tokens: &[&str]) -> Map<String, Value> {
    let mut v = Map::new();
    for (i, t) in tokens.iter().enumerate() {
        v.entry(t.to_string()).or_insert(json!(i));
    }
    v
}

/// The file's merges (`"a b"`) as pairs.
fn merges(md: &Metadata, key: &str) -> Result<Option<Vec<Value>>> {
    let Some(list) = md.get_str_array(key)? else {
        return Ok(None);
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let parts: Vec<&str> = m.split(' ').collect();
            match parts.as_slice() {
                [a, b] if !a.is_empty() && !b.is_empty() => Ok(json!([a, b])),
                _ => Err(md.error(
                    key,
                    format!("merge {i} `{m}` is not two tokens separated by a space"),
                )),
            }
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn byte_level_step(add_prefix_space: bool, trim_offsets: bool, use_regex: bool) -> Value {
    json!({ "type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": trim_offsets, "use_regex": use_regex })
}

/// The pre-tokenizer llama.cpp applies for `tokenizer.ggml.pre`.
fn byte_level_pre_tokenizer(md: &Metadata) -> Result<Value> {
    let key = "tokenizer.ggml.pre";
    let split = |pattern: &str| {
        json!({ "type": "Sequence", "pretokenizers": [
            { "type": "Split", "pattern": { "Regex": pattern }, "behavior": "Isolated", "invert": false },
            byte_level_step(false, false, false),
        ]})
    };
    Ok(match md.get_str(key)? {
        Some("gpt2") => byte_level_step(false, true, true),
        // llama.cpp: each digit alone, then GPT-2's split.
        Some("smollm") => json!({ "type": "Sequence", "pretokenizers": [
            { "type": "Digits", "individual_digits": true },
            byte_level_step(false, true, true),
        ]}),
        Some("qwen2" | "deepseek-r1-qwen") => split(QWEN2_SPLIT),
        Some("llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" | "dbrx") => split(LLAMA3_SPLIT),
        Some(other) => {
            return Err(Error::unsupported(
                format!("{}: key `{key}`", md.path()),
                format!("pre-tokenizer `{other}` is not supported ({SUPPORTED_PRE} are)"),
            ))
        }
        None => {
            return Err(Error::unsupported(
                format!("{}: key `{key}`", md.path()),
                format!(
                    "missing: a byte-level vocabulary needs its pre-tokenizer ({SUPPORTED_PRE})"
                ),
            ))
        }
    })
}

fn byte_level(md: &Metadata, tokens: &[&str]) -> Result<Value> {
    let merges = merges(md, "tokenizer.ggml.merges")?.ok_or_else(|| {
        md.error(
            "tokenizer.ggml.merges",
            "missing (a gpt2 vocabulary needs its merges)",
        )
    })?;
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": byte_level_pre_tokenizer(md)?,
        "post_processor": null,
        "decoder": byte_level_step(true, true, true),
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab(tokens), "merges": merges,
        },
    }))
}

/// Merges for a SentencePiece vocabulary without any, in the order Hugging Face derives them:
/// every split of every token into two tokens of the vocabulary (the splits of one token by
/// the ids of their parts), then best first by the merged token's score, ties by the longer
/// left part, then the longer right part (a stable sort).
fn derive_merges(md: &Metadata, tokens: &[&str]) -> Result<Vec<Value>> {
    let key = "tokenizer.ggml.scores";
    let scores = md.get_f64_array(key)?.ok_or_else(|| {
        md.error(
            key,
            "missing (a llama vocabulary without merges needs its scores)",
        )
    })?;
    if scores.len() != tokens.len() {
        return Err(md.error(
            key,
            format!("{} scores for {} tokens", scores.len(), tokens.len()),
        ));
    }
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (i, &t) in tokens.iter().enumerate() {
        ids.entry(t).or_insert(i);
    }
    // (score, left chars, right chars, left id, right id)
    let mut found: Vec<(f64, usize, usize, usize, usize)> = vec![];
    for (merged, &token) in tokens.iter().enumerate() {
        if ids.get(token) != Some(&merged) {
            continue;
        }
        let start = found.len();
        for (n_left, (split, _)) in token.char_indices().enumerate().skip(1) {
            let (a, b) = token.split_at(split);
            if let (Some(&ia), Some(&ib)) = (ids.get(a), ids.get(b)) {
                let n_right = token.chars().count() - n_left;
                found.push((scores[merged], n_left, n_right, ia, ib));
            }
        }
        found[start..].sort_by_key(|m| (m.3, m.4));
    }
    found.sort_by(|x, y| y.0.total_cmp(&x.0).then(y.1.cmp(&x.1)).then(y.2.cmp(&x.2)));
    Ok(found
        .into_iter()
        .map(|m| json!([tokens[m.3], tokens[m.4]]))
        .collect())
}

fn sentencepiece(md: &Metadata, tokens: &[&str], unk: Option<usize>) -> Result<Value> {
    let merges = match merges(md, "tokenizer.ggml.merges")? {
        Some(m) => m,
        None => derive_merges(md, tokens)?,
    };
    // Hugging Face's Metaspace: spaces become `▁`, and one is prepended to the text (not after
    // each special token, as llama.cpp does) when the vocabulary wants a space prefix.
    let add_space_prefix = md
        .get_bool("tokenizer.ggml.add_space_prefix")?
        .unwrap_or(true);
    let pre_tokenizer = json!({
        "type": "Metaspace", "replacement": "▁",
        "prepend_scheme": if add_space_prefix { "first" } else { "never" }, "split": false,
    });
    let mut decoders = vec![
        json!({ "type": "Replace", "pattern": { "String": "▁" }, "content": " " }),
        json!({ "type": "ByteFallback" }),
        json!({ "type": "Fuse" }),
    ];
    if add_space_prefix {
        decoders.push(json!({ "type": "Strip", "content": " ", "start": 1, "stop": 0 }));
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": { "type": "Sequence", "decoders": decoders },
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk.map(|u| tokens[u]),
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab(tokens), "merges": merges,
        },
    }))
}

/// A template adding BOS before and/or EOS after each sequence; `null` when neither is added.
fn post_processor(tokens: &[&str], bos: Option<usize>, eos: Option<usize>) -> Value {
    if bos.is_none() && eos.is_none() {
        return Value::Null;
    }
    let special = |id: usize, type_id: u32| json!({ "SpecialToken": { "id": tokens[id], "type_id": type_id } });
    let sequence =
        |name: &str, type_id: u32| json!({ "Sequence": { "id": name, "type_id": type_id } });
    let mut single = vec![];
    let mut pair = vec![];
    for (name, type_id, out) in [("A", 0, &mut single), ("B", 1, &mut pair)] {
        if let Some(b) = bos {
            out.push(special(b, type_id));
        }
        out.push(sequence(name, type_id));
        if let Some(e) = eos {
            out.push(special(e, type_id));
        }
    }
    let pair: Vec<Value> = single.iter().cloned().chain(pair).collect();
    let mut specials = Map::new();
    for id in [bos, eos].into_iter().flatten() {
        specials.insert(
            tokens[id].to_string(),
            json!({ "id": tokens[id], "ids": [id], "tokens": [tokens[id]] }),
        );
    }
    json!({ "type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials })
}

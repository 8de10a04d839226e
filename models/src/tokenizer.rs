//! [`Tokenizer`]: a Hugging Face model folder's tokenizer — `tokenizer.json` through the
//! `tokenizers` crate, the special tokens of `tokenizer_config.json`, `generation_config.json`
//! and `config.json`, and the chat template — with an [`IncrementalDecoder`] for streaming.
//!
//! Decoding matches transformers 5, which does not apply `clean_up_tokenization_spaces` to BPE
//! tokenizers (Qwen2, Llama and Mistral all use BPE): the text is what `tokenizer.json`'s
//! decoder gives.

mod chat;
mod stream;

use std::path::Path;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use chat::{ChatMessage, ChatTemplate, RenderedChat};
pub use stream::IncrementalDecoder;

use crate::{Error, Result};

/// A tokenizer with its special tokens and chat template, as a model folder defines them.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// `inner`'s vocabulary size with added tokens, computed once: the crate builds the whole
    /// vocabulary map to count it, which per decoded token cost more than the model's step.
    vocab_size: usize,
    /// `tokenizer.json`, for errors.
    location: String,
    bos: Option<SpecialToken>,
    eos: Option<SpecialToken>,
    eos_ids: Vec<u32>,
    add_bos: bool,
    /// Other special tokens the chat template may use (`pad_token`, `unk_token`).
    extra_tokens: Vec<(&'static str, String)>,
    chat_template: Option<ChatTemplate>,
    /// SHA-256 of the files the tokenizer was read from (see [`Tokenizer::fingerprint`]).
    files_digest: [u8; 32],
}

/// A special token: its text and id.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SpecialToken {
    text: String,
    id: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("location", &self.location)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos_ids", &self.eos_ids)
            .field("add_bos", &self.add_bos)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// Loads the tokenizer of the model folder `dir`: `tokenizer.json` is required;
    /// `tokenizer_config.json`, `chat_template.jinja`, `generation_config.json` and
    /// `config.json` are read when present. A malformed file is an error naming it.
    pub fn load(dir: impl AsRef<Path>) -> Result<Tokenizer> {
        let dir = dir.as_ref();
        let path = dir.join("tokenizer.json");
        let location = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let inner: tokenizers::Tokenizer = text
            .parse()
            .map_err(|e| Error::format(&location, format!("not a tokenizer: {e}")))?;

        let config_path = dir.join("tokenizer_config.json");
        let config = read_json_object(&config_path)?.unwrap_or_default();
        let config_location = config_path.display().to_string();
        let special = |key: &str| -> Result<Option<SpecialToken>> {
            let Some(text) = token_text(&config, key, &config_location)? else {
                return Ok(None);
            };
            let id = inner.token_to_id(&text).ok_or_else(|| {
                Error::format(
                    &config_location,
                    format!("key `{key}`: `{text}` is not a token of {location}"),
                )
            })?;
            Ok(Some(SpecialToken { text, id }))
        };
        let bos = special("bos_token")?;
        let eos = special("eos_token")?;
        let mut extra_tokens = Vec::new();
        for key in ["pad_token", "unk_token"] {
            if let Some(text) = token_text(&config, key, &config_location)? {
                extra_tokens.push((key, text));
            }
        }
        let add_bos = match config.get("add_bos_token") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(Error::format(
                    &config_location,
                    format!("key `add_bos_token`: expected true or false, found {other}"),
                ))
            }
        };

        // generation_config.json and config.json may name more end-of-sequence tokens (chat
        // models often stop at both an end-of-turn and an end-of-text token).
        let generation_path = dir.join("generation_config.json");
        let generation = read_json_object(&generation_path)?;
        let model_config_path = dir.join("config.json");
        let model_config = read_json_object(&model_config_path)?;
        let mut eos_ids: Vec<u32> = eos.iter().map(|t| t.id).collect();
        for (file, path) in [
            (&generation, &generation_path),
            (&model_config, &model_config_path),
        ] {
            if let Some(map) = file {
                for id in token_ids(map, "eos_token_id", path)? {
                    if !eos_ids.contains(&id) {
                        eos_ids.push(id);
                    }
                }
            }
        }
        // A folder whose tokenizer_config.json does not say (no `bos_token` key at all) takes
        // the id from the generation or model config; an explicit null means none.
        let bos = match bos {
            Some(bos) => Some(bos),
            None if config.contains_key("bos_token") => None,
            None => {
                let mut found = None;
                for (file, path) in [
                    (&generation, &generation_path),
                    (&model_config, &model_config_path),
                ] {
                    if let (None, Some(map)) = (&found, file) {
                        if let Some(&id) = token_ids(map, "bos_token_id", path)?.first() {
                            let text = inner.id_to_token(id).ok_or_else(|| {
                                Error::format(
                                    path.display().to_string(),
                                    format!(
                                        "key `bos_token_id`: {id} is not a token of {location}"
                                    ),
                                )
                            })?;
                            found = Some(SpecialToken { text, id });
                        }
                    }
                }
                found
            }
        };

        let chat_template = ChatTemplate::find(dir, &config, &config_location)?;
        let mut digest = Sha256::new();
        digest.update(text.as_bytes());
        for map in [Some(&config), generation.as_ref(), model_config.as_ref()] {
            digest.update(b"\0");
            if let Some(map) = map {
                digest.update(serde_json::to_string(map).unwrap_or_default().as_bytes());
            }
        }
        Ok(Tokenizer {
            files_digest: digest.finalize().into(),
            vocab_size: inner.get_vocab_size(true),
            inner,
            location,
            bos,
            eos,
            eos_ids,
            add_bos,
            extra_tokens,
            chat_template,
        })
    }

    /// The `tokenizers` crate's tokenizer, for what this type does not wrap.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The token ids of `text`. With `add_special_tokens`, the post-processor of
    /// `tokenizer.json` adds what the model expects (for example a BOS token); special tokens
    /// written in `text` are always recognised, as in transformers.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Invalid(format!("{}: cannot encode: {e}", self.location)))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`; with `skip_special_tokens`, special tokens are left out. An id past
    /// the vocabulary is an error.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let vocab = self.vocab_size();
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Invalid(format!(
                "{}: token id {bad} is past the vocabulary ({vocab} tokens)",
                self.location
            )));
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Invalid(format!("{}: cannot decode: {e}", self.location)))
    }

    /// A decoder that turns tokens into text one at a time, as they are generated.
    pub fn incremental_decoder(&self, skip_special_tokens: bool) -> IncrementalDecoder<'_> {
        IncrementalDecoder::new(self, skip_special_tokens)
    }

    /// The number of token ids, added tokens included (transformers' `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Whether `id` is a special token (one that `skip_special_tokens` leaves out).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .get_added_vocabulary()
            .get_added_tokens_decoder()
            .get(&id)
            .is_some_and(|token| token.special)
    }

    /// The id of `token` (a token's text, special or not), if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The beginning-of-sequence token's id: `bos_token` of `tokenizer_config.json`, or, when
    /// that file does not have the key, `bos_token_id` of `generation_config.json` or
    /// `config.json`.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|t| t.id)
    }

    /// Every id that ends generation: `eos_token` of `tokenizer_config.json`, then the
    /// `eos_token_id` (a number or a list) of `generation_config.json` and of `config.json`,
    /// without repeats.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether the model expects a BOS token first (`add_bos_token` of
    /// `tokenizer_config.json`, default false). `encode(text, true)` adds it already when
    /// `tokenizer.json`'s post-processor says so.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The chat template, if the folder has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Renders the chat template with `messages`, `add_generation_prompt` and the special
    /// tokens (`bos_token`, `eos_token`, `pad_token`, `unk_token`), as transformers'
    /// `apply_chat_template(..., tokenize=False)` does. The text holds the special tokens
    /// already: encode it with `add_special_tokens = false`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.template()?
            .render(messages, add_generation_prompt, &self.template_tokens())
    }
}

/// A conversation as training reads it: the token ids of the rendered template and, per token,
/// whether it is the assistant's (what transformers' `return_assistant_tokens_mask` gives).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatTokens {
    pub text: String,
    pub input_ids: Vec<u32>,
    pub assistant_mask: Vec<bool>,
}

impl Tokenizer {
    /// The chat template, or an error saying the tokenizer has none.
    fn template(&self) -> Result<&ChatTemplate> {
        self.chat_template.as_ref().ok_or_else(|| {
            Error::Invalid(format!(
                "{}: the tokenizer has no chat template (no `chat_template` in \
                 tokenizer_config.json and no chat_template.jinja)",
                self.location
            ))
        })
    }

    /// The special tokens a template sees (`bos_token`, `eos_token`, `pad_token`, `unk_token`).
    fn template_tokens(&self) -> Vec<(&str, &str)> {
        let mut tokens: Vec<(&str, &str)> = Vec::new();
        if let Some(bos) = &self.bos {
            tokens.push(("bos_token", &bos.text));
        }
        if let Some(eos) = &self.eos {
            tokens.push(("eos_token", &eos.text));
        }
        for (key, text) in &self.extra_tokens {
            tokens.push((key, text));
        }
        tokens
    }

    /// Replaces the chat template (for example with one that has `{% generation %}` blocks).
    pub fn set_chat_template(&mut self, template: ChatTemplate) {
        self.chat_template = Some(template);
    }

    /// A mutable view of the chat template, to set variables on it.
    pub fn chat_template_mut(&mut self) -> Option<&mut ChatTemplate> {
        self.chat_template.as_mut()
    }

    /// Renders `messages` with the chat template, tokenizes the text as transformers'
    /// `apply_chat_template(..., tokenize=True)` does (no special tokens added: the template
    /// writes them) and marks the assistant's tokens: every token from the one holding an
    /// assistant span's first byte to the one holding its last (see
    /// [`ChatTemplate::render_spans`]).
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<ChatTokens> {
        self.encode_chat_after(messages, 0)
    }

    /// As [`Tokenizer::encode_chat`], with only the assistant messages after the first `skip`
    /// marked (a conversational prompt/completion whose prompt holds `skip` of them). The
    /// template's assistant spans must then be one per assistant message.
    pub fn encode_chat_after(&self, messages: &[ChatMessage], skip: usize) -> Result<ChatTokens> {
        let template = self.template()?;
        let ends: Vec<String> = self
            .eos_ids
            .iter()
            .filter_map(|&id| self.inner.id_to_token(id))
            .collect();
        let ends: Vec<&str> = ends.iter().map(String::as_str).collect();
        let mut rendered = template.render_spans(messages, &self.template_tokens(), &ends)?;
        if skip > 0 {
            let assistants = messages.iter().filter(|m| m.role == "assistant").count();
            if rendered.assistant.len() != assistants {
                return Err(Error::Invalid(format!(
                    "{}: the chat template marks {} assistant spans for {assistants} assistant \
                     messages, so the prompt's cannot be told from the completion's",
                    self.location,
                    rendered.assistant.len()
                )));
            }
            rendered.assistant.drain(..skip);
        }
        let encoding = self
            .inner
            .encode(rendered.text.as_str(), false)
            .map_err(|e| Error::Invalid(format!("{}: cannot encode: {e}", self.location)))?;
        let offsets = encoding.get_offsets();
        let token_at = |byte: usize| offsets.iter().position(|&(s, e)| s <= byte && byte < e);
        let mut assistant_mask = vec![false; offsets.len()];
        for span in &rendered.assistant {
            let Some(first) = token_at(span.start) else {
                break;
            };
            let last = token_at(span.end - 1).unwrap_or(offsets.len() - 1);
            for m in &mut assistant_mask[first..=last] {
                *m = true;
            }
        }
        Ok(ChatTokens {
            text: rendered.text,
            input_ids: encoding.get_ids().to_vec(),
            assistant_mask,
        })
    }

    /// A SHA-256 of everything that decides how text becomes tokens: `tokenizer.json`, the
    /// special tokens of the configs, and the chat template with its variables. Caches of
    /// tokenized data are keyed by it.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut digest = Sha256::new();
        digest.update(self.files_digest);
        if let Some(template) = &self.chat_template {
            digest.update(template.fingerprint());
        }
        digest.finalize().into()
    }

    /// The end-of-sequence token appended to text and completions (`eos_token` of
    /// `tokenizer_config.json`, else the first `eos_token_id` of the other configs).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_ids.first().copied()
    }
}

/// The object in the JSON file `path`, or `None` if there is no such file.
fn read_json_object(path: &Path) -> Result<Option<Map<String, Value>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let location = path.display().to_string();
    match serde_json::from_str(&text) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(Error::format(location, "expected a JSON object")),
        Err(e) => Err(Error::format(location, format!("invalid JSON: {e}"))),
    }
}

/// A special token's text: a string, or an added-token object `{"content": ...}`.
fn token_text(map: &Map<String, Value>, key: &str, location: &str) -> Result<Option<String>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(token)) => match token.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(Error::format(
                location,
                format!("key `{key}`: a token object without a string `content`"),
            )),
        },
        Some(other) => Err(Error::format(
            location,
            format!(
                "key `{key}`: expected a token (a string or {{\"content\": ...}}), found {other}"
            ),
        )),
    }
}

/// A token id or a list of them (null or absent: none).
fn token_ids(map: &Map<String, Value>, key: &str, path: &Path) -> Result<Vec<u32>> {
    let bad = |v: &Value| {
        Error::format(
            path.display().to_string(),
            format!("key `{key}`: expected a token id or a list of them, found {v}"),
        )
    };
    let id = |v: &Value| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad(v))
    };
    match map.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(id).collect(),
        Some(v) => Ok(vec![id(v)?]),
    }
}

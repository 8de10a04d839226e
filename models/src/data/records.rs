//! One record of a dataset (a JSON object: a JSONL line or a Parquet row) to one training
//! example: the formats people have, each with its loss mask and end-of-sequence token.

use serde_json::{Map, Value};

use crate::batch::{Sequence, IGNORE_INDEX};
use crate::tokenizer::{ChatMessage, Tokenizer};

/// The dataset formats. A file holds one of them; it is detected from the first record, or
/// forced with `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// `{"text": ...}`: every token is a target; EOS is appended.
    Text,
    /// `{"prompt": ..., "completion": ...}`: the completion's tokens (and the EOS appended
    /// after it) are the targets, unless the prompt is trained on too.
    PromptCompletion,
    /// `{"messages": [{"role": ..., "content": ...}, ...]}`: rendered with the chat template;
    /// the assistant's tokens are the targets.
    Messages,
    /// `{"input_ids": [...]}` with optional `labels` (aligned, -100 ignored): used as given.
    Tokens,
}

impl Format {
    /// Every format, in the order detection tries them.
    pub const ALL: [Format; 4] = [
        Format::Messages,
        Format::PromptCompletion,
        Format::Tokens,
        Format::Text,
    ];

    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::PromptCompletion => "prompt-completion",
            Format::Messages => "messages",
            Format::Tokens => "tokens",
        }
    }

    /// The keys that make a record of this format.
    fn keys(self) -> &'static str {
        match self {
            Format::Text => "`text`",
            Format::PromptCompletion => "`prompt` and `completion`",
            Format::Messages => "`messages`",
            Format::Tokens => "`input_ids` (with optional `labels`)",
        }
    }

    /// The format a record's keys say: `messages`, else `prompt` + `completion`, else
    /// `input_ids`, else `text`. Other keys are ignored.
    pub fn detect(record: &Map<String, Value>) -> Option<Format> {
        let has = |k: &str| record.contains_key(k);
        if has("messages") {
            Some(Format::Messages)
        } else if has("prompt") || has("completion") {
            Some(Format::PromptCompletion)
        } else if has("input_ids") {
            Some(Format::Tokens)
        } else if has("text") {
            Some(Format::Text)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "text" => Ok(Format::Text),
            "prompt-completion" | "prompt_completion" | "completion" => {
                Ok(Format::PromptCompletion)
            }
            "messages" | "chat" => Ok(Format::Messages),
            "tokens" | "input_ids" | "input-ids" => Ok(Format::Tokens),
            _ => Err(format!(
                "unknown format `{s}` (expected text, prompt-completion, messages or tokens)"
            )),
        }
    }
}

/// Why a record cannot be trained on; `--skip-invalid` counts them by kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub kind: InvalidKind,
    pub message: String,
}

/// The kinds of [`Invalid`] records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InvalidKind {
    NotUtf8,
    NotJson,
    Field,
    Role,
    Template,
    NoTarget,
    Vocabulary,
}

impl InvalidKind {
    /// How the kind reads in a count ("3 lines skipped: 2 not JSON, ...").
    pub fn describe(self) -> &'static str {
        match self {
            InvalidKind::NotUtf8 => "not UTF-8",
            InvalidKind::NotJson => "not JSON",
            InvalidKind::Field => "a missing or mistyped field",
            InvalidKind::Role => "an unknown role",
            InvalidKind::Template => "refused by the chat template or tokenizer",
            InvalidKind::NoTarget => "no token to train on",
            InvalidKind::Vocabulary => "an id outside the vocabulary",
        }
    }
}

fn invalid(kind: InvalidKind, message: impl Into<String>) -> Invalid {
    Invalid {
        kind,
        message: message.into(),
    }
}

fn field(message: impl Into<String>) -> Invalid {
    invalid(InvalidKind::Field, message)
}

/// Turns records into examples with the model's tokenizer.
pub struct Converter<'a> {
    pub tokenizer: Option<&'a Tokenizer>,
    pub vocab: usize,
    /// Prompt (and non-assistant) tokens are targets too.
    pub train_on_prompt: bool,
}

impl Converter<'_> {
    /// The example of `record`, read as `format`.
    pub fn convert(
        &self,
        record: &Map<String, Value>,
        format: Format,
    ) -> Result<Sequence, Invalid> {
        let seq = match format {
            Format::Tokens => tokens(record)?,
            Format::Text => {
                let text = string(record, "text")?;
                let mut ids = self.encode(text, true)?;
                self.append_eos(&mut ids)?;
                Sequence::new(ids)
            }
            Format::PromptCompletion if record.get("prompt").is_some_and(Value::is_array) => {
                self.conversational_completion(record)?
            }
            Format::PromptCompletion => {
                let prompt = string(record, "prompt")?;
                let completion = string(record, "completion")?;
                let mut input_ids = self.encode(prompt, true)?;
                let prompt_len = input_ids.len();
                input_ids.extend(self.encode(completion, false)?);
                self.append_eos(&mut input_ids)?;
                let labels = input_ids
                    .iter()
                    .enumerate()
                    .map(|(t, &id)| {
                        if t < prompt_len && !self.train_on_prompt {
                            IGNORE_INDEX
                        } else {
                            id as i32
                        }
                    })
                    .collect();
                Sequence {
                    input_ids,
                    labels: Some(labels),
                }
            }
            Format::Messages => self.conversation(record)?,
        };
        if seq.input_ids.is_empty() {
            return Err(invalid(InvalidKind::NoTarget, "no tokens"));
        }
        check_vocabulary(&seq, self.vocab)?;
        // A pre-tokenized example without targets is kept as given (evaluation data may hold
        // one on purpose); training drops such examples and counts them, and refuses data
        // with no target at all.
        Ok(seq)
    }

    fn tokenizer(&self) -> Result<&Tokenizer, Invalid> {
        self.tokenizer.ok_or_else(|| {
            field("this format needs a tokenizer, and the model folder has no tokenizer.json")
        })
    }

    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, Invalid> {
        self.tokenizer()?
            .encode(text, add_special_tokens)
            .map_err(|e| invalid(InvalidKind::Template, e.to_string()))
    }

    /// Appends EOS (a target: the model learns to stop) unless the text already ends with it.
    fn append_eos(&self, ids: &mut Vec<u32>) -> Result<(), Invalid> {
        let tokenizer = self.tokenizer()?;
        let eos = tokenizer.eos_id().ok_or_else(|| {
            invalid(
                InvalidKind::Template,
                "the tokenizer has no end-of-sequence token to end the example with",
            )
        })?;
        if ids.last() != Some(&eos) {
            ids.push(eos);
        }
        Ok(())
    }

    /// `{"prompt": [messages], "completion": [messages]}` (TRL's conversational form): the
    /// conversation rendered whole, the completion's assistant tokens the targets.
    fn conversational_completion(&self, record: &Map<String, Value>) -> Result<Sequence, Invalid> {
        let prompt = messages(record, "prompt")?;
        let completion = messages(record, "completion")?;
        if !completion.iter().any(|m| m.role == "assistant") {
            return Err(invalid(
                InvalidKind::NoTarget,
                "the `completion` has no assistant message",
            ));
        }
        let skip = prompt.iter().filter(|m| m.role == "assistant").count();
        let all: Vec<ChatMessage> = prompt.into_iter().chain(completion).collect();
        self.chat_sequence(&all, skip)
    }

    fn conversation(&self, record: &Map<String, Value>) -> Result<Sequence, Invalid> {
        let messages = messages(record, "messages")?;
        self.chat_sequence(&messages, 0)
    }

    /// The tokens of `messages` through the chat template; the targets are the assistant's
    /// tokens after its first `skip` messages.
    fn chat_sequence(&self, messages: &[ChatMessage], skip: usize) -> Result<Sequence, Invalid> {
        let chat = self
            .tokenizer()?
            .encode_chat_after(messages, skip)
            .map_err(|e| invalid(InvalidKind::Template, e.to_string()))?;
        if !chat.assistant_mask.iter().any(|&m| m) {
            return Err(invalid(
                InvalidKind::NoTarget,
                "no assistant token (the conversation has no assistant message with text)",
            ));
        }
        let labels = chat
            .input_ids
            .iter()
            .zip(&chat.assistant_mask)
            .map(|(&id, &assistant)| {
                if assistant || self.train_on_prompt {
                    id as i32
                } else {
                    IGNORE_INDEX
                }
            })
            .collect();
        Ok(Sequence {
            input_ids: chat.input_ids,
            labels: Some(labels),
        })
    }
}

/// The messages of `record[key]`: a list of `{role, content}` objects, roles system, user or
/// assistant, content a string or a list of text parts.
fn messages(record: &Map<String, Value>, key: &str) -> Result<Vec<ChatMessage>, Invalid> {
    let list = record.get(key).and_then(Value::as_array).ok_or_else(|| {
        field(format!(
            "`{key}` must be a list of {{\"role\", \"content\"}} objects"
        ))
    })?;
    let mut messages = Vec::with_capacity(list.len());
    for (m, message) in list.iter().enumerate() {
        let at = |what: &str| field(format!("`{key}[{m}]`: {what}"));
        let object = message
            .as_object()
            .ok_or_else(|| at("expected an object with `role` and `content`"))?;
        let role = object
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| at("`role` must be a string"))?;
        if !["system", "user", "assistant"].contains(&role) {
            return Err(invalid(
                InvalidKind::Role,
                format!(
                    "`{key}[{m}]`: unknown role `{role}` (expected system, user or \
                         assistant)"
                ),
            ));
        }
        let content = match object.get("content") {
            Some(Value::String(s)) => s.clone(),
            // The parts form (`[{"type": "text", "text": ...}, ...]`): the texts, joined.
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (p, part) in parts.iter().enumerate() {
                    match (part.get("type").and_then(Value::as_str), part.get("text")) {
                        (Some("text"), Some(Value::String(t))) => text.push_str(t),
                        _ => {
                            return Err(at(&format!(
                                "`content[{p}]`: only text parts \
                                     ({{\"type\": \"text\", \"text\": ...}}) can be trained on"
                            )))
                        }
                    }
                }
                text
            }
            _ => return Err(at("`content` must be a string or a list of text parts")),
        };
        messages.push(ChatMessage::new(role, content));
    }
    if messages.is_empty() {
        return Err(field(format!("`{key}` is empty")));
    }
    Ok(messages)
}

/// Checks that `record` can be read as `format` before it is converted: the keys are there.
pub fn check_keys(record: &Map<String, Value>, format: Format) -> Result<(), Invalid> {
    let ok = match format {
        Format::Text => record.contains_key("text"),
        Format::PromptCompletion => {
            record.contains_key("prompt") && record.contains_key("completion")
        }
        Format::Messages => record.contains_key("messages"),
        Format::Tokens => record.contains_key("input_ids"),
    };
    if ok {
        Ok(())
    } else {
        Err(field(format!(
            "a {format} record needs {} (found keys: {})",
            format.keys(),
            record
                .keys()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

fn string<'r>(record: &'r Map<String, Value>, key: &str) -> Result<&'r str, Invalid> {
    match record.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(field(format!(
            "`{key}` must be a string, found {}",
            kind_of(other)
        ))),
        None => Err(field(format!("`{key}` is missing"))),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A pre-tokenized record, used exactly as given.
fn tokens(record: &Map<String, Value>) -> Result<Sequence, Invalid> {
    let input_ids = integers(record.get("input_ids"), "input_ids")?
        .into_iter()
        .map(|id| {
            u32::try_from(id)
                .map_err(|_| invalid(InvalidKind::Vocabulary, format!("`input_ids` holds {id}")))
        })
        .collect::<Result<Vec<u32>, Invalid>>()?;
    let labels = match record.get("labels") {
        None | Some(Value::Null) => None,
        labels => {
            let labels = integers(labels, "labels")?
                .into_iter()
                .map(|l| {
                    i32::try_from(l).map_err(|_| {
                        invalid(InvalidKind::Vocabulary, format!("`labels` holds {l}"))
                    })
                })
                .collect::<Result<Vec<i32>, Invalid>>()?;
            if labels.len() != input_ids.len() {
                return Err(field(format!(
                    "{} labels for {} input_ids (labels are aligned with input_ids)",
                    labels.len(),
                    input_ids.len()
                )));
            }
            Some(labels)
        }
    };
    if input_ids.is_empty() {
        return Err(field("`input_ids` is empty"));
    }
    Ok(Sequence { input_ids, labels })
}

fn integers(value: Option<&Value>, key: &str) -> Result<Vec<i64>, Invalid> {
    let array = value
        .and_then(Value::as_array)
        .ok_or_else(|| field(format!("`{key}` must be a list of integers")))?;
    array
        .iter()
        .map(|v| {
            v.as_i64()
                .ok_or_else(|| field(format!("`{key}` holds {v}, not an integer")))
        })
        .collect()
}

/// Refuses ids and labels the model cannot embed or predict.
fn check_vocabulary(seq: &Sequence, vocab: usize) -> Result<(), Invalid> {
    if let Some((t, id)) = seq
        .input_ids
        .iter()
        .enumerate()
        .find(|(_, &id)| id as usize >= vocab)
    {
        return Err(invalid(
            InvalidKind::Vocabulary,
            format!("input_ids[{t}] = {id} is outside the vocabulary of {vocab}"),
        ));
    }
    if let Some((t, l)) = seq
        .labels
        .iter()
        .flatten()
        .enumerate()
        .find(|(_, &l)| l != IGNORE_INDEX && !(0..vocab as i64).contains(&(l as i64)))
    {
        return Err(invalid(
            InvalidKind::Vocabulary,
            format!("labels[{t}] = {l} is neither -100 nor a token id below {vocab}"),
        ));
    }
    Ok(())
}

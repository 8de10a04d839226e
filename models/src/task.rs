//! Held-out prompts with expected answers, and a model's greedy answers to them: the task
//! metric of a fine-tune (exact match of the answer with the expected text, after trimming
//! whitespace), measured from generations, not from the loss.

use std::path::Path;

use serde_json::Value;

use crate::generate::{GenerateOptions, Sampling};
use crate::model::Model;
use crate::tokenizer::{ChatMessage, Tokenizer};
use crate::{Error, Result};

/// A conversation to answer and the answer expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskPrompt {
    pub conversation: Vec<ChatMessage>,
    pub expected: String,
}

impl TaskPrompt {
    /// The last user message (what a table shows of the prompt).
    pub fn question(&self) -> &str {
        self.conversation
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map_or("", |m| m.content.as_str())
    }
}

/// The prompts of a JSONL file: `messages` records whose last message is the assistant's
/// expected answer, or `prompt` + `completion` records (the prompt as a user message).
pub fn read_task_prompts(path: &Path) -> Result<Vec<TaskPrompt>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let value: Value =
            serde_json::from_str(line).map_err(|e| Error::format(&at, format!("not JSON: {e}")))?;
        out.push(task_prompt(&value).map_err(|m| Error::format(&at, m))?);
    }
    if out.is_empty() {
        return Err(Error::format(path.display().to_string(), "no prompts"));
    }
    Ok(out)
}

fn task_prompt(value: &Value) -> std::result::Result<TaskPrompt, String> {
    let string = |v: &Value, what: &str| {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{what} must be a string"))
    };
    if let Some(messages) = value.get("messages").and_then(Value::as_array) {
        let mut conversation = messages
            .iter()
            .map(|m| {
                Ok(ChatMessage::new(
                    string(&m["role"], "`role`")?,
                    string(&m["content"], "`content`")?,
                ))
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        match conversation.pop() {
            Some(last) if last.role == "assistant" && !conversation.is_empty() => Ok(TaskPrompt {
                conversation,
                expected: last.content,
            }),
            _ => Err(
                "the last message must be the assistant's expected answer, after a \
                      prompt"
                    .into(),
            ),
        }
    } else if let (Some(p), Some(c)) = (value.get("prompt"), value.get("completion")) {
        Ok(TaskPrompt {
            conversation: vec![ChatMessage::new("user", string(p, "`prompt`")?)],
            expected: string(c, "`completion`")?,
        })
    } else {
        Err("expected `messages`, or `prompt` and `completion`".into())
    }
}

/// The model's greedy answer to `prompt` (through the chat template), at most `max_new_tokens`
/// tokens, without its end-of-turn token.
pub fn answer(
    model: &Model,
    tokenizer: &Tokenizer,
    prompt: &TaskPrompt,
    max_new_tokens: usize,
) -> Result<String> {
    let text = tokenizer.apply_chat_template(&prompt.conversation, true)?;
    let ids = tokenizer.encode(&text, false)?;
    let mut stop_tokens = tokenizer.eos_ids().to_vec();
    stop_tokens.extend(&model.config.eos_token_ids);
    let options = GenerateOptions {
        max_new_tokens,
        sampling: Sampling::Greedy,
        stop_tokens: stop_tokens.clone(),
    };
    let mut generated = model.generate(&ids, &options, |_| Ok(()))?;
    generated.retain(|t| !stop_tokens.contains(t));
    tokenizer.decode(&generated, true)
}

/// Whether `answer` is the expected one (both trimmed).
pub fn exact_match(answer: &str, expected: &str) -> bool {
    answer.trim() == expected.trim()
}

//! Chat templates: the Jinja template of `chat_template.jinja` or of `tokenizer_config.json`'s
//! `chat_template`, rendered with minijinja in the environment transformers gives it
//! (`trim_blocks`, `lstrip_blocks`, loop controls, Python string and dict methods,
//! `raise_exception`, `strftime_now`, and a `tojson` that writes what Python's `json.dumps`
//! writes).
//!
//! For training, [`ChatTemplate::render_spans`] also says which bytes of the rendered text are
//! the assistant's: the `{% generation %}` blocks where the template has them (transformers'
//! `return_assistant_tokens_mask`), otherwise found by rendering the conversation prefix by
//! prefix.

use std::ops::Range;
use std::path::Path;

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};
use serde::Serialize;
use serde_json::Map;

use crate::{Error, Result};

/// The name the template is registered under in its environment.
const NAME: &str = "chat_template";

/// The filter `{% generation %}` blocks become (minijinja has no such tag; a filter block keeps
/// the tag's whitespace control), and the context variable that makes it mark its text.
const GENERATION_FILTER: &str = "kiln_generation";
const MARK_GENERATION: &str = "kiln_mark_generation";
/// Private-use characters around generated text while spans are found; removed after.
const GENERATION_START: char = '\u{F8F0}';
const GENERATION_END: char = '\u{F8F1}';

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, or whatever roles the template knows.
    pub role: String,
    /// The message's text.
    pub content: String,
}

impl ChatMessage {
    /// A message of `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template and the file it came from.
pub struct ChatTemplate {
    source: String,
    location: String,
    env: Environment<'static>,
    /// Whether the template marks the assistant's text with `{% generation %}` blocks.
    has_generation: bool,
    /// The variables set with [`ChatTemplate::set_variable`], as JSON (for the fingerprint).
    variables: Vec<(String, String)>,
}

/// A conversation rendered for training: the text, and the byte ranges of it that the
/// assistant says (its content and end-of-turn token), in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedChat {
    pub text: String,
    pub assistant: Vec<Range<usize>>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("location", &self.location)
            .field("source", &self.source)
            .finish()
    }
}

impl ChatTemplate {
    /// The template of the folder `dir`: `chat_template.jinja` if there is one (as transformers
    /// prefers it), else `chat_template` of `tokenizer_config.json` (`config`, read from
    /// `config_location`) — a string, or a list of `{name, template}` from which `default`
    /// is taken.
    pub(super) fn find(
        dir: &Path,
        config: &Map<String, serde_json::Value>,
        config_location: &str,
    ) -> Result<Option<ChatTemplate>> {
        let file = dir.join("chat_template.jinja");
        match std::fs::read_to_string(&file) {
            Ok(source) => return ChatTemplate::new(source, file.display().to_string()).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&file, e)),
        }
        let bad = |message: String| {
            Error::format(config_location, format!("key `chat_template`: {message}"))
        };
        let source = match config.get("chat_template") {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(source)) => source.clone(),
            Some(serde_json::Value::Array(named)) => {
                let mut names = Vec::new();
                let mut default = None;
                for entry in named {
                    let name = entry.get("name").and_then(|n| n.as_str());
                    let template = entry.get("template").and_then(|t| t.as_str());
                    let (Some(name), Some(template)) = (name, template) else {
                        return Err(bad(format!(
                            "expected entries {{\"name\": ..., \"template\": ...}}, found {entry}"
                        )));
                    };
                    names.push(name);
                    if name == "default" {
                        default = Some(template.to_string());
                    }
                }
                default.ok_or_else(|| {
                    bad(format!(
                        "no template named `default` (found: {})",
                        names.join(", ")
                    ))
                })?
            }
            Some(other) => {
                return Err(bad(format!(
                    "expected a template or a list of named templates, found {other}"
                )))
            }
        };
        ChatTemplate::new(source, config_location.to_string()).map(Some)
    }

    /// Compiles `source`; `location` names the file it came from in errors.
    pub fn new(source: String, location: String) -> Result<ChatTemplate> {
        let (compiled, has_generation) = rewrite_generation_blocks(&source);
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_filter(GENERATION_FILTER, generation);
        env.add_template_owned(NAME, compiled)
            .map_err(|e| Error::format(&location, format!("chat template: {}", describe(&e))))?;
        Ok(ChatTemplate {
            source,
            location,
            env,
            has_generation,
            variables: Vec::new(),
        })
    }

    /// Defines a variable every rendering sees, as extra keyword arguments of transformers'
    /// `apply_chat_template` do (for example Llama 3's `date_string`).
    pub fn set_variable(&mut self, name: &str, value: impl Serialize) {
        let value = Value::from_serialize(value);
        self.variables.push((
            name.to_string(),
            serde_json::to_string(&value).unwrap_or_default(),
        ));
        self.env.add_global(name.to_string(), value);
    }

    /// The template's text and variables, hashed.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut digest = Sha256::new();
        digest.update(self.source.as_bytes());
        for (name, value) in &self.variables {
            digest.update(format!("\0{name}={value}").as_bytes());
        }
        digest.finalize().into()
    }

    /// Whether the template marks the assistant's text with `{% generation %}` blocks.
    pub fn has_generation_blocks(&self) -> bool {
        self.has_generation
    }

    /// The template's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the template with `messages`, `add_generation_prompt` and the special tokens
    /// `tokens` (`("bos_token", "<s>")`...). `tools` and `documents` are none, as in
    /// transformers when none are given. A template that refuses the conversation
    /// (`raise_exception`) is an [`Error::Invalid`] with its message.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tokens: &[(&str, &str)],
    ) -> Result<String> {
        self.render_with(messages, add_generation_prompt, tokens, false)
    }

    /// Renders the whole conversation (no generation prompt) and finds the assistant's bytes:
    /// the `{% generation %}` blocks where the template has them; otherwise, for each assistant
    /// message, the text that rendering the conversation through it adds to the conversation
    /// before it with the generation prompt, cut after the last end-of-turn token of
    /// `end_tokens` in it (ChatML's newline after `<|im_end|>` is not the assistant's). A
    /// template whose renderings of prefixes are not prefixes of the whole cannot be split
    /// this way: that is an error suggesting generation blocks.
    pub fn render_spans(
        &self,
        messages: &[ChatMessage],
        tokens: &[(&str, &str)],
        end_tokens: &[&str],
    ) -> Result<RenderedChat> {
        if let Some(m) = messages.iter().position(|m| {
            m.content.contains([GENERATION_START, GENERATION_END])
                || m.role.contains([GENERATION_START, GENERATION_END])
        }) {
            return Err(Error::Invalid(format!(
                "message {} holds U+F8F0 or U+F8F1, which Kiln reserves to find the \
                 assistant's text",
                m + 1
            )));
        }
        if self.has_generation {
            let marked = self.render_with(messages, false, tokens, true)?;
            return Ok(strip_generation_marks(&marked));
        }
        let text = self.render_with(messages, false, tokens, false)?;
        let mut assistant = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            if message.role != "assistant" {
                continue;
            }
            let not_prefix = |what: &str| {
                Error::Invalid(format!(
                    "{}: chat template: {what} (message {}), so the assistant's tokens cannot \
                     be found by rendering prefixes; give the template {{% generation %}} \
                     blocks",
                    self.location,
                    i + 1
                ))
            };
            let before = self.render_with(&messages[..i], true, tokens, false)?;
            let through = self.render_with(&messages[..=i], false, tokens, false)?;
            if !through.starts_with(&before) {
                return Err(not_prefix(
                    "the conversation through an assistant message does not start with the \
                     conversation before it and the generation prompt",
                ));
            }
            if !text.starts_with(&through) {
                return Err(not_prefix(
                    "the whole conversation does not start with its rendering through an \
                     assistant message",
                ));
            }
            let span = &through[before.len()..];
            let end = end_tokens
                .iter()
                .filter(|t| !t.is_empty())
                .filter_map(|t| span.rfind(*t).map(|at| at + t.len()))
                .max()
                .unwrap_or(span.len());
            assistant.push(before.len()..before.len() + end);
        }
        Ok(RenderedChat { text, assistant })
    }

    fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tokens: &[(&str, &str)],
        mark_generation: bool,
    ) -> Result<String> {
        let mut context: Vec<(&str, Value)> = vec![
            ("messages", Value::from_serialize(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
            (MARK_GENERATION, Value::from(mark_generation)),
        ];
        for (key, text) in tokens {
            context.push((key, Value::from(*text)));
        }
        let context: Value = context.into_iter().collect();
        let template = self.env.get_template(NAME).map_err(|e| {
            Error::format(&self.location, format!("chat template: {}", describe(&e)))
        })?;
        template.render(context).map_err(|e| {
            Error::Invalid(format!(
                "{}: chat template: {}",
                self.location,
                describe(&e)
            ))
        })
    }
}

/// A minijinja error with its line and its causes, on one line.
fn describe(error: &minijinja::Error) -> String {
    let mut text = match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    };
    if let Some(line) = error.line() {
        text.push_str(&format!(" (line {line})"));
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// `source` with its `{% generation %}` / `{% endgeneration %}` tags (any whitespace control)
/// turned into a filter block of [`GENERATION_FILTER`], and whether it had any. A hand-written
/// scan: the tags are the only syntax minijinja lacks, and a tag inside a string literal of the
/// template would be as wrong for transformers' Jinja.
fn rewrite_generation_blocks(source: &str) -> (String, bool) {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    let mut found = false;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        let Some(close) = tag.find("%}") else {
            break;
        };
        let inner = &tag[2..close];
        let open_trim = inner.starts_with(['-', '+']);
        let body = inner.trim_start_matches(['-', '+']);
        let close_trim = body.ends_with(['-', '+']);
        let word = body.trim_end_matches(['-', '+']).trim();
        let left = if open_trim { &inner[..1] } else { "" };
        let right = if close_trim {
            &body[body.len() - 1..]
        } else {
            ""
        };
        match word {
            "generation" => {
                found = true;
                out.push_str(&format!("{{%{left} filter {GENERATION_FILTER} {right}%}}"));
            }
            "endgeneration" => out.push_str(&format!("{{%{left} endfilter {right}%}}")),
            _ => out.push_str(&tag[..close + 2]),
        }
        rest = &tag[close + 2..];
    }
    out.push_str(rest);
    (out, found)
}

/// The filter of `{% generation %}` blocks: the text, between marks while spans are found.
fn generation(state: &minijinja::State, text: String) -> String {
    let mark = state.lookup(MARK_GENERATION).is_some_and(|v| v.is_true());
    if mark {
        format!("{GENERATION_START}{text}{GENERATION_END}")
    } else {
        text
    }
}

/// The text without its generation marks, and the byte ranges they enclosed (empty ones
/// dropped; nested blocks count once, as their outermost).
fn strip_generation_marks(marked: &str) -> RenderedChat {
    let mut text = String::with_capacity(marked.len());
    let mut assistant = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for c in marked.chars() {
        match c {
            GENERATION_START => {
                if depth == 0 {
                    start = text.len();
                }
                depth += 1;
            }
            GENERATION_END => {
                depth = depth.saturating_sub(1);
                if depth == 0 && text.len() > start {
                    assistant.push(start..text.len());
                }
            }
            c => text.push(c),
        }
    }
    RenderedChat { text, assistant }
}

/// Templates call `raise_exception(message)` to refuse a conversation.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`, the `tojson` transformers
/// installs: `", "` and `": "` between items, non-ASCII kept, no HTML escaping.
fn tojson(
    value: Value,
    indent: Option<usize>,
    kwargs: Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    let indent = match indent {
        Some(indent) => Some(indent),
        None => kwargs.get::<Option<usize>>("indent")?,
    };
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let written = match indent {
        Some(n) => {
            let spaces = vec![b' '; n];
            let formatter = serde_json::ser::PrettyFormatter::with_indent(&spaces);
            value.serialize(&mut serde_json::Serializer::with_formatter(
                &mut out, formatter,
            ))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out,
            PythonSeparators,
        )),
    };
    written.map_err(|e| {
        minijinja::Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON")
            .with_source(e)
    })?;
    let text = String::from_utf8(out).map_err(|e| {
        minijinja::Error::new(ErrorKind::InvalidOperation, "JSON is not UTF-8").with_source(e)
    })?;
    Ok(Value::from_safe_string(text))
}

/// serde_json's compact output with Python's default separators.
struct PythonSeparators;

impl serde_json::ser::Formatter for PythonSeparators {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// `strftime_now(format)`: the current UTC time formatted with `%d %m %Y %y %b %B %a %A %H %M
/// %S %j %%` (Llama 3.1-style templates print today's date with it).
fn strftime_now(format: String) -> std::result::Result<Value, minijinja::Error> {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_time(&format, seconds).map(Value::from)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// `format` applied to `seconds` since the Unix epoch (UTC).
pub(crate) fn format_time(
    format: &str,
    seconds: u64,
) -> std::result::Result<String, minijinja::Error> {
    let days = (seconds / 86_400) as i64;
    let in_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = ((days % 7 + 7 + 3) % 7) as usize;
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('b') => out.push_str(&MONTHS[month as usize - 1][..3]),
            Some('B') => out.push_str(MONTHS[month as usize - 1]),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('H') => out.push_str(&format!("{:02}", in_day / 3600)),
            Some('M') => out.push_str(&format!("{:02}", in_day / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", in_day % 60)),
            Some('j') => out.push_str(&format!("{day_of_year:03}")),
            Some('%') => out.push('%'),
            other => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported directive %{}",
                        other.map(String::from).unwrap_or_default()
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The day count since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::{format_time, rewrite_generation_blocks};

    #[test]
    fn generation_tags_become_filter_blocks_with_their_whitespace_control() {
        let (out, found) = rewrite_generation_blocks(
            "a{% generation %}b{%- endgeneration -%}c{%+generation-%}{% if x %}{%endgeneration%}",
        );
        assert!(found);
        assert_eq!(
            out,
            "a{% filter kiln_generation %}b{%- endfilter -%}c{%+ filter kiln_generation -%}\
             {% if x %}{% endfilter %}"
        );
        let (out, found) = rewrite_generation_blocks("{% for m in messages %}{{ m }}{% endfor %}");
        assert!(!found);
        assert_eq!(out, "{% for m in messages %}{{ m }}{% endfor %}");
    }

    /// Against Python's `datetime.fromtimestamp(s, timezone.utc).strftime(...)`.
    #[test]
    fn format_time_matches_python() {
        let format = "%d %b %Y|%A %a %B %m %y %H:%M:%S %j %%";
        for (seconds, expected) in [
            (0, "01 Jan 1970|Thursday Thu January 01 70 00:00:00 001 %"),
            (
                951_786_123,
                "29 Feb 2000|Tuesday Tue February 02 00 01:02:03 060 %",
            ),
            (
                1_721_952_000,
                "26 Jul 2024|Friday Fri July 07 24 00:00:00 208 %",
            ),
            (
                4_102_444_799,
                "31 Dec 2099|Thursday Thu December 12 99 23:59:59 365 %",
            ),
            (
                1_709_164_800,
                "29 Feb 2024|Thursday Thu February 02 24 00:00:00 060 %",
            ),
        ] {
            assert_eq!(format_time(format, seconds).unwrap(), expected, "{seconds}");
        }
        assert!(format_time("%Q", 0).is_err());
    }
}

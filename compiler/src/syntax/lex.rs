//! Tokens, whitespace and the parser's error type.
//!
//! There is no separate lexer: every token parser skips leading whitespace and comments, then
//! matches. Errors record the byte offset where they happened and what was expected there; when
//! `alt` tries several branches, the error that got furthest wins (at a tie, the expectations
//! merge), so the final message names the real problem.

use nom::bytes::complete::{take_while, take_while1};
use nom::error::{ErrorKind, ParseError};
use nom::{IResult, Input, Parser};
use nom_locate::LocatedSpan;

/// Parser input: the remaining text and its offset in the file.
pub type In<'a> = LocatedSpan<&'a str>;
pub type PResult<'a, T> = IResult<In<'a>, T, PError>;

/// Keywords cannot be used as names.
pub const KEYWORDS: &[&str] = &[
    "kernel",
    "fn",
    "let",
    "mut",
    "for",
    "in",
    "step",
    "if",
    "else",
    "as",
    "true",
    "false",
    "None",
    "static_assert",
];

/// One thing the parser would have accepted at an error's position. Static, so that the many
/// errors of failed alternatives cost no string formatting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// A token, shown in backticks: `;`.
    Token(&'static str),
    /// A description: "an expression".
    What(&'static str),
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Token(t) => write!(f, "`{t}`"),
            Expected::What(w) => f.write_str(w),
        }
    }
}

/// A parse error: where, and either what was expected there or a full message.
#[derive(Clone, Debug, PartialEq)]
pub struct PError {
    pub offset: usize,
    pub expected: Vec<Expected>,
    pub message: Option<String>,
    /// At the end of the file inside a block: where the outermost open block's `{` is.
    pub unclosed: Option<usize>,
    /// Where the unexpected token is, when the caret points elsewhere (a missing `;` is shown
    /// at the end of the statement, the token found is on the next line).
    pub found_at: Option<usize>,
    /// A sentence printed as a note under the error: how to fix it.
    pub hint: Option<&'static str>,
}

impl PError {
    pub fn expected(offset: usize, what: Expected) -> PError {
        PError {
            offset,
            expected: vec![what],
            message: None,
            unclosed: None,
            found_at: None,
            hint: None,
        }
    }

    pub fn message(offset: usize, message: impl Into<String>) -> PError {
        PError {
            offset,
            expected: vec![],
            message: Some(message.into()),
            unclosed: None,
            found_at: None,
            hint: None,
        }
    }
}

impl<'a> ParseError<In<'a>> for PError {
    fn from_error_kind(input: In<'a>, _kind: ErrorKind) -> Self {
        PError {
            offset: input.location_offset(),
            expected: vec![],
            message: None,
            unclosed: None,
            found_at: None,
            hint: None,
        }
    }

    fn append(_input: In<'a>, _kind: ErrorKind, other: Self) -> Self {
        other
    }

    fn or(self, other: Self) -> Self {
        match self.offset.cmp(&other.offset) {
            std::cmp::Ordering::Greater => self,
            std::cmp::Ordering::Less => other,
            std::cmp::Ordering::Equal => {
                if self.message.is_some() {
                    return self;
                }
                if other.message.is_some() {
                    return other;
                }
                let mut merged = self;
                for e in other.expected {
                    if !merged.expected.contains(&e) {
                        merged.expected.push(e);
                    }
                }
                merged
            }
        }
    }
}

/// A recoverable error: another branch may still match.
pub fn backtrack<T>(offset: usize, what: Expected) -> PResult<'static, T> {
    Err(nom::Err::Error(PError::expected(offset, what)))
}

/// An unrecoverable error: the input is wrong here.
pub fn fatal<'a, T>(err: PError) -> PResult<'a, T> {
    Err(nom::Err::Failure(err))
}

/// Turns recoverable errors into unrecoverable ones (after a token that commits to a form).
pub fn commit<'a, T>(r: PResult<'a, T>) -> PResult<'a, T> {
    r.map_err(|e| match e {
        nom::Err::Error(e) => nom::Err::Failure(e),
        other => other,
    })
}

pub fn offset(i: &In) -> usize {
    i.location_offset()
}

/// Skips whitespace, `// line` and `/* block */` comments.
pub fn ws(mut i: In) -> PResult<()> {
    // Most calls find a token right away.
    if !i
        .fragment()
        .starts_with(|c: char| c.is_whitespace() || c == '/')
    {
        return Ok((i, ()));
    }
    loop {
        let (rest, _) = take_while(char::is_whitespace).parse(i)?;
        i = rest;
        if i.fragment().starts_with("//") {
            let (rest, _) = take_while(|c| c != '\n').parse(i)?;
            i = rest;
        } else if i.fragment().starts_with("/*") {
            match i.fragment().find("*/") {
                Some(end) => i = i.take_from(end + 2),
                None => {
                    return fatal(PError::message(offset(&i), "unterminated block comment"));
                }
            }
        } else {
            return Ok((i, ()));
        }
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// A word: identifier or keyword, after whitespace. Returns (start offset, text).
pub fn word(i: In<'_>) -> PResult<'_, (usize, &str)> {
    let (i, _) = ws(i)?;
    let start = offset(&i);
    if !i.fragment().starts_with(is_ident_start) {
        return backtrack(start, Expected::What("an identifier"));
    }
    let (i, w) = take_while1(is_ident_char).parse(i)?;
    Ok((i, (start, *w.fragment())))
}

/// A name that is not a keyword.
pub fn ident(i: In<'_>) -> PResult<'_, (usize, &str)> {
    let (rest, (start, w)) = word(i)?;
    if KEYWORDS.contains(&w) {
        return backtrack(start, Expected::What("an identifier"));
    }
    Ok((rest, (start, w)))
}

/// A specific keyword.
pub fn kw<'a>(k: &'static str) -> impl Fn(In<'a>) -> PResult<'a, usize> {
    move |i: In<'a>| {
        let (after_ws, _) = ws(i)?;
        let start = offset(&after_ws);
        match word(i) {
            Ok((rest, (s, w))) if w == k => Ok((rest, s)),
            _ => backtrack(start, Expected::Token(k)),
        }
    }
}

/// Characters that may not follow a symbol, or it would be a longer operator.
fn forbidden_after(sym: &str) -> &'static str {
    match sym {
        "=" => "=",
        "<" => "=<",
        ">" => "=>",
        "-" | "+" | "*" | "/" | "%" | "^" => "=",
        "!" => "=",
        "&" => "&",
        "|" => "|",
        "." => ".",
        ":" => ":",
        _ => "",
    }
}

/// A punctuation symbol, after whitespace. Returns its start offset.
pub fn sym<'a>(s: &'static str) -> impl Fn(In<'a>) -> PResult<'a, usize> {
    move |i: In<'a>| {
        let (i, _) = ws(i)?;
        let start = offset(&i);
        let text = i.fragment();
        let longer = || text[s.len()..].starts_with(|c| forbidden_after(s).contains(c));
        if text.starts_with(s) && !longer() {
            Ok((i.take_from(s.len()), start))
        } else {
            backtrack(start, Expected::Token(s))
        }
    }
}

/// The token starting at `offset` as written in the source; empty at the end of the file.
pub fn token_text(text: &str, offset: usize) -> &str {
    let rest = text.get(offset..).unwrap_or("");
    let Some(c) = rest.chars().next() else {
        return "";
    };
    if is_ident_char(c) {
        // A `.` belongs to a number (`2.5`) only before a digit: `0..n` starts with `0`.
        let bytes = rest.as_bytes();
        let len = (0..bytes.len())
            .find(|&k| {
                let b = bytes[k];
                let fraction_dot = b == b'.'
                    && c.is_ascii_digit()
                    && bytes.get(k + 1).is_some_and(u8::is_ascii_digit);
                !(is_ident_char(b as char) || fraction_dot)
            })
            .unwrap_or(bytes.len());
        &rest[..len]
    } else {
        const OPS: &[&str] = &[
            "..", "==", "!=", "<=", ">=", "&&", "||", "<<", ">>", "+=", "-=", "*=", "/=", "/*",
        ];
        match OPS.iter().find(|op| rest.starts_with(*op)) {
            Some(op) => &rest[..op.len()],
            None => &rest[..c.len_utf8()],
        }
    }
}

/// The token at `offset`, for "found ..." in messages: `` `x` ``, ``keyword `let` ``, or
/// "end of file".
pub fn token_at(text: &str, offset: usize) -> String {
    match token_text(text, offset) {
        "" => "end of file".into(),
        tok if KEYWORDS.contains(&tok) => format!("keyword `{tok}`"),
        tok => format!("`{tok}`"),
    }
}

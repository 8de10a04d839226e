//! Tokens, whitespace and the parser's error type.
//!
//! There is no separate lexer: every token parser skips leading whitespace and comments, then
//! matches. Errors record the byte offset where they happened and what was expected there; when
//! `alt` tries several branches, the error that got furthest wins (at a tie, the expectations
//! merge), so the final message names the real problem.

use nom::bytes::complete::{tag, take_while, take_while1};
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

/// A parse error: where, and either what was expected there or a full message.
#[derive(Clone, Debug, PartialEq)]
pub struct PError {
    pub offset: usize,
    pub expected: Vec<String>,
    pub message: Option<String>,
    /// A second place worth pointing at, e.g. where an unclosed block opened.
    pub note: Option<(usize, String)>,
    /// Where the unexpected token is, when the caret points elsewhere (a missing `;` is shown
    /// at the end of the statement, the token found is on the next line).
    pub found_at: Option<usize>,
}

impl PError {
    pub fn expected(offset: usize, what: impl Into<String>) -> PError {
        PError {
            offset,
            expected: vec![what.into()],
            message: None,
            note: None,
            found_at: None,
        }
    }

    pub fn message(offset: usize, message: impl Into<String>) -> PError {
        PError {
            offset,
            expected: vec![],
            message: Some(message.into()),
            note: None,
            found_at: None,
        }
    }
}

impl<'a> ParseError<In<'a>> for PError {
    fn from_error_kind(input: In<'a>, _kind: ErrorKind) -> Self {
        PError {
            offset: input.location_offset(),
            expected: vec![],
            message: None,
            note: None,
            found_at: None,
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
pub fn backtrack<T>(offset: usize, what: impl Into<String>) -> PResult<'static, T> {
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
        return backtrack(start, "an identifier");
    }
    let (i, w) = take_while1(is_ident_char).parse(i)?;
    Ok((i, (start, *w.fragment())))
}

/// A name that is not a keyword.
pub fn ident(i: In<'_>) -> PResult<'_, (usize, &str)> {
    let (rest, (start, w)) = word(i)?;
    if KEYWORDS.contains(&w) {
        return backtrack(start, "an identifier");
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
            _ => backtrack(start, format!("`{k}`")),
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
        let r: PResult<'a, In<'a>> = tag(s).parse(i);
        match r {
            Ok((rest, _)) => {
                let next = rest.fragment().chars().next();
                if next.is_some_and(|c| forbidden_after(s).contains(c)) {
                    return backtrack(start, format!("`{s}`"));
                }
                Ok((rest, start))
            }
            Err(_) => backtrack(start, format!("`{s}`")),
        }
    }
}

/// The text of the token at `offset`, for "found ..." in messages.
pub fn token_at(text: &str, offset: usize) -> String {
    let rest = text.get(offset..).unwrap_or("");
    let Some(c) = rest.chars().next() else {
        return "end of file".into();
    };
    let tok: String = if is_ident_char(c) {
        rest.chars()
            .take_while(|&c| is_ident_char(c) || c == '.')
            .collect()
    } else {
        const OPS: &[&str] = &[
            "..", "==", "!=", "<=", ">=", "&&", "||", "<<", ">>", "+=", "-=", "*=", "/=", "/*",
        ];
        match OPS.iter().find(|op| rest.starts_with(*op)) {
            Some(op) => op.to_string(),
            None => c.to_string(),
        }
    };
    let tok = tok.trim_end_matches('.').to_string();
    let tok = if tok.is_empty() { c.to_string() } else { tok };
    if KEYWORDS.contains(&tok.as_str()) {
        format!("keyword `{tok}`")
    } else {
        format!("`{tok}`")
    }
}

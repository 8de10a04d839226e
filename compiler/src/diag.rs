//! Compile errors that point at the source: `file:line:col: error: message`, the source line, and
//! a caret under the offending span.

use crate::syntax::ast::Span;
use std::fmt;

/// A source text and the name it is reported under.
#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    pub text: String,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Source {
        Source {
            name: name.into(),
            text: text.into(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: u32) -> (usize, usize) {
        let offset = (offset as usize).min(self.text.len());
        let offset = floor_char_boundary(&self.text, offset);
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = self.text[line_start..offset].chars().count() + 1;
        (line, col)
    }

    fn line_text(&self, line: usize) -> &str {
        self.text.lines().nth(line - 1).unwrap_or("")
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// One error, located by a span.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub message: String,
    pub span: Span,
    /// A short text printed after the caret.
    pub label: Option<String>,
    /// Extra lines printed below (`note: ...`).
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn new(span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            span,
            label: None,
            notes: vec![],
        }
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = Some(label.into());
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    /// Renders the diagnostic against its source:
    ///
    /// ```text
    /// k.kiln:3:17: error: expected `)`, found `;`
    ///   |
    /// 3 |     let x = f(a;
    ///   |                ^ expected `)`
    /// ```
    pub fn render(&self, src: &Source) -> String {
        let (line, col) = src.line_col(self.span.start);
        let text = src.line_text(line);
        let gutter = line.to_string().len();
        let pad = " ".repeat(gutter);
        let (end_line, end_col) = src.line_col(self.span.end.max(self.span.start));
        let caret_len = if end_line == line && end_col > col {
            end_col - col
        } else {
            1
        };
        // Tabs keep their width in the caret line so the caret stays under the span.
        let lead: String = text
            .chars()
            .take(col - 1)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        let mut out = format!(
            "{}:{line}:{col}: error: {}\n{pad} |\n{line} | {text}\n{pad} | {lead}{}",
            src.name,
            self.message,
            "^".repeat(caret_len)
        );
        if let Some(label) = &self.label {
            out.push(' ');
            out.push_str(label);
        }
        out.push('\n');
        for note in &self.notes {
            out.push_str(&format!("{pad} = note: {note}\n"));
        }
        out
    }
}

/// A failed compilation: the diagnostics, rendered against the source they point into.
///
/// Its `Debug` form is the rendered text too (`{:#?}` shows the fields), so that an error
/// returned with `?` from `main` prints the caret diagnostics, not an escaped struct.
#[derive(Clone, PartialEq, thiserror::Error)]
pub struct CompileError {
    pub diagnostics: Vec<Diagnostic>,
    /// The diagnostics rendered with file, line, column, source line and caret.
    pub rendered: String,
}

impl CompileError {
    pub fn new(src: &Source, diagnostics: Vec<Diagnostic>) -> CompileError {
        let rendered = diagnostics
            .iter()
            .map(|d| d.render(src))
            .collect::<Vec<_>>()
            .join("\n");
        CompileError {
            diagnostics,
            rendered,
        }
    }
}

impl fmt::Debug for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            return f
                .debug_struct("CompileError")
                .field("diagnostics", &self.diagnostics)
                .field("rendered", &self.rendered)
                .finish();
        }
        f.write_str(self.rendered.trim_end())
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.rendered.trim_end())
    }
}

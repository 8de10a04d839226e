//! Guessing which `{` lacks its `}` when a file ends inside a block.
//!
//! The parser only knows that the outermost block is unclosed: every inner `}` matched *some*
//! `{`. People indent, though, so a `}` indented less than the line of the `{` it closes most
//! likely belongs to an outer block, and the `{` it was matched with is the one missing its `}`.

/// The offset of the first `{` after `from` that is closed by a `}` indented less than the
/// `{`'s own line, if any. Comments and strings are skipped.
pub fn likely_unclosed(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut open: Vec<usize> = vec![];
    let mut k = from;
    while k < bytes.len() {
        match bytes[k] {
            b'/' if bytes.get(k + 1) == Some(&b'/') => {
                k = text[k..].find('\n').map_or(bytes.len(), |n| k + n);
            }
            b'/' if bytes.get(k + 1) == Some(&b'*') => {
                k = text[k + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |n| k + 2 + n + 2);
                continue;
            }
            b'"' => {
                k = text[k + 1..]
                    .find(['"', '\n'])
                    .map_or(bytes.len(), |n| k + 1 + n);
            }
            b'{' => open.push(k),
            b'}' => {
                let opened = open.pop()?;
                if indent_of_line(text, k) < indent_of_line(text, opened) {
                    return Some(opened);
                }
            }
            _ => {}
        }
        k += 1;
    }
    None
}

/// The number of leading spaces and tabs of the line holding `offset`.
fn indent_of_line(text: &str, offset: usize) -> usize {
    let start = text[..offset].rfind('\n').map_or(0, |n| n + 1);
    text[start..]
        .bytes()
        .take_while(|b| *b == b' ' || *b == b'\t')
        .count()
}

#[cfg(test)]
mod tests {
    use super::likely_unclosed;

    #[test]
    fn finds_the_brace_closed_by_a_dedented_brace() {
        let text = "kernel k() {\n    if a {\n        f();\n}\n";
        assert_eq!(
            likely_unclosed(text, 11),
            Some(text.find("a {").unwrap() + 2)
        );
    }

    #[test]
    fn well_indented_code_gives_no_guess() {
        let text = "kernel k() {\n    if a {\n        f();\n    }\n";
        assert_eq!(likely_unclosed(text, 11), None);
        let one_line = "kernel k() { if a { f(); }";
        assert_eq!(likely_unclosed(one_line, 11), None);
    }

    #[test]
    fn braces_in_comments_and_strings_do_not_count() {
        let text = "kernel k() {\n    // {\n    /* { */ static_assert(true, \"{\");\n";
        assert_eq!(likely_unclosed(text, 11), None);
    }
}

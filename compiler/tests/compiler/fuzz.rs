//! No input may panic the compiler: random text, and random mutations of real kernels (the
//! mutations keep most of the structure, so they reach deep into the parser and the checker).

use kiln_compiler::{check, Defines, Source};
use proptest::prelude::*;

fn corpus() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/kernels");
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    out.sort();
    out
}

const ALPHABET: &[&str] = &[
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
    "None",
    "static_assert",
    "load",
    "store",
    "range",
    "sum",
    "max",
    "dot",
    "where",
    "x",
    "n",
    "BLOCK",
    "f32",
    "bf16",
    "*mut",
    "(",
    ")",
    "{",
    "}",
    "[",
    "]",
    "<",
    ">",
    ",",
    ";",
    ":",
    "=",
    "==",
    "+",
    "-",
    "*",
    "/",
    "%",
    "..",
    "&&",
    "!",
    "0",
    "1",
    "1024",
    "0.5",
    "1e-6",
    "-inf",
    "\"msg\"",
    "//",
    "/*",
    "*/",
    " ",
    "\n",
];

fn check_no_panic(text: &str) {
    let _ = check(&Source::new("fuzz.kiln", text), &Defines::new());
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, usize),
    Duplicate(usize, usize),
    Swap(usize, usize),
}

fn apply(text: &str, muts: &[Mutation]) -> String {
    let mut bytes: Vec<u8> = text.as_bytes().to_vec();
    for m in muts {
        let len = bytes.len().max(1);
        match *m {
            Mutation::Delete(at, n) => {
                let at = at % len;
                let end = (at + n % 12).min(bytes.len());
                bytes.drain(at.min(bytes.len())..end);
            }
            Mutation::Insert(at, tok) => {
                let at = (at % len).min(bytes.len());
                let t = ALPHABET[tok % ALPHABET.len()].as_bytes();
                bytes.splice(at..at, t.iter().copied());
            }
            Mutation::Duplicate(at, n) => {
                let at = (at % len).min(bytes.len());
                let end = (at + n % 40).min(bytes.len());
                let chunk: Vec<u8> = bytes[at..end].to_vec();
                bytes.splice(at..at, chunk);
            }
            Mutation::Swap(a, b) => {
                if !bytes.is_empty() {
                    let (a, b) = (a % bytes.len(), b % bytes.len());
                    bytes.swap(a, b);
                }
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<usize>()).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, t)| Mutation::Insert(a, t)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, n)| Mutation::Duplicate(a, n)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
    ]
}

/// Cases per property; `KILN_FUZZ_CASES` raises it for a long local run.
fn cases() -> u32 {
    std::env::var("KILN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_token_soup(tokens in proptest::collection::vec(0..ALPHABET.len(), 0..80)) {
        let text: String = tokens.iter().map(|&t| ALPHABET[t]).collect::<Vec<_>>().join(" ");
        check_no_panic(&text);
    }

    #[test]
    fn random_bytes(text in "\\PC{0,200}") {
        check_no_panic(&text);
    }

    #[test]
    fn mutated_kernels(file in 0usize..64, muts in proptest::collection::vec(mutation(), 1..6)) {
        let corpus = corpus();
        let text = apply(&corpus[file % corpus.len()], &muts);
        check_no_panic(&text);
    }
}

/// Deep nesting is refused with an error instead of overflowing the stack.
#[test]
fn deep_nesting_is_an_error() {
    for (open, close) in [("(", ")"), ("-", ""), ("{", "}"), ("[", "]")] {
        let depth = 100_000;
        let body = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        let text = format!("kernel k(y: *mut f32) {{ let v = {body}; }}");
        let err = check(&Source::new("deep.kiln", text), &Defines::new()).unwrap_err();
        assert!(err.to_string().contains("deep"), "{err}");
    }
}

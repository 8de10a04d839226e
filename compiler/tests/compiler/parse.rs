//! The parser on its own: precedence, associativity, every statement and expression form, spans,
//! and the wording and position of syntax errors.

use kiln_compiler::ast::*;
use kiln_compiler::syntax::{parse_module, print_module};
use kiln_compiler::{DType, Source};

/// The `--emit ast` form of one expression (parsed as the tail of a helper's body).
fn e(src: &str) -> String {
    let text = format!("fn f() {{ {src} }}");
    let m = parse_module(&text).unwrap_or_else(|d| panic!("{src}: {}", d.message));
    let printed = print_module(&m);
    let line = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("(tail "))
        .unwrap_or_else(|| panic!("no tail in {printed}"));
    // Strip the closing parens of `(tail`, `(block` and `(fn`.
    line.strip_suffix(")))").unwrap().to_string()
}

/// The body of `fn f() { src }`.
fn body(src: &str) -> Block {
    let m = parse_module(&format!("fn f() {{ {src} }}")).unwrap();
    match m.items.into_iter().next().unwrap() {
        Item::Function(f) => f.body,
        Item::Kernel(_) => unreachable!(),
    }
}

/// The parse error of `text`, as `line:col: message`.
fn err(text: &str) -> String {
    let d = parse_module(text).expect_err(text);
    let (line, col) = Source::new("t", text).line_col(d.span.start);
    format!("{line}:{col}: {}", d.message)
}

fn err_in_body(src: &str) -> String {
    err(&format!("kernel k(y: *mut f32) {{\n{src}\n}}\n"))
}

#[test]
fn binary_precedence_follows_rust() {
    assert_eq!(e("a + b * c"), "(+ a (* b c))");
    assert_eq!(e("a * b + c"), "(+ (* a b) c)");
    assert_eq!(e("a + b << c"), "(<< (+ a b) c)");
    assert_eq!(e("a << b & c"), "(& (<< a b) c)");
    assert_eq!(e("a & b ^ c | d"), "(| (^ (& a b) c) d)");
    assert_eq!(e("a | b < c"), "(< (| a b) c)");
    assert_eq!(e("a < b && c >= d || e"), "(|| (&& (< a b) (>= c d)) e)");
    assert_eq!(e("a % b / c"), "(/ (% a b) c)");
}

#[test]
fn binary_operators_are_left_associative() {
    assert_eq!(e("a - b - c"), "(- (- a b) c)");
    assert_eq!(e("a / b * c"), "(* (/ a b) c)");
    assert_eq!(e("a || b || c"), "(|| (|| a b) c)");
    assert_eq!(e("a >> b >> c"), "(>> (>> a b) c)");
}

#[test]
fn parentheses_override_precedence() {
    assert_eq!(e("(a + b) * c"), "(* (+ a b) c)");
    assert_eq!(e("a - (b - c)"), "(- a (- b c))");
    assert_eq!(e("((x))"), "x");
}

#[test]
fn casts_bind_between_unary_and_multiplication() {
    assert_eq!(e("a * b as f32"), "(* a (as b f32))");
    assert_eq!(e("-a as f32"), "(as (- a) f32)");
    assert_eq!(e("a as i64 as f32"), "(as (as a i64) f32)");
    assert_eq!(e("n as f32 + eps"), "(+ (as n f32) eps)");
    assert_eq!(e("(x * y) as bf16"), "(as (* x y) bf16)");
    assert_eq!(e("p as *mut f32"), "(as p *mut f32)");
}

#[test]
fn unary_operators_nest() {
    assert_eq!(e("- -x"), "(- (- x))");
    assert_eq!(e("!a && b"), "(&& (! a) b)");
    assert_eq!(e("a - -1"), "(- a (- 1))");
    assert_eq!(e("-x[:, None]"), "(- (index x [:, None]))");
}

#[test]
fn comparisons_do_not_chain() {
    for src in ["a < b < c", "a == b != c", "a <= b + 1 > c"] {
        let msg = err_in_body(&format!("let m = {src};"));
        assert!(msg.contains("cannot be chained"), "{src}: {msg}");
    }
    assert_eq!(e("(a < b) == c"), "(== (< a b) c)");
    assert_eq!(e("a < b && b < c"), "(&& (< a b) (< b c))");
}

#[test]
fn literals() {
    assert_eq!(e("1_000"), "1000");
    assert_eq!(e("0x1F"), "31");
    assert_eq!(e("0xff_ff"), "65535");
    assert_eq!(e("9223372036854775807"), "9223372036854775807");
    assert_eq!(e("1.0"), "1.0");
    assert_eq!(e("2.5e3"), "2500.0");
    assert_eq!(e("1e-6"), "0.000001");
    assert_eq!(e("true && false"), "(&& true false)");
    assert_eq!(e("inf"), "inf");
}

#[test]
fn a_dot_needs_a_digit_so_ranges_lex_as_int_dotdot_name() {
    let b = body("for i in 0..n { }");
    let StmtKind::For { start, end, .. } = &b.stmts[0].kind else {
        panic!("{b:?}")
    };
    assert_eq!(start.kind, ExprKind::Int(0));
    assert_eq!(end.kind, ExprKind::Name("n".into()));
    let b = body("for i in 1..2 { }");
    let StmtKind::For { start, end, .. } = &b.stmts[0].kind else {
        panic!("{b:?}")
    };
    assert_eq!(
        (&start.kind, &end.kind),
        (&ExprKind::Int(1), &ExprKind::Int(2))
    );
}

#[test]
fn calls_indexing_and_lists() {
    assert_eq!(
        e("load(x + cols, mask: m, other: 0.0)"),
        "(load (+ x cols) mask: m other: 0.0)"
    );
    assert_eq!(e("program_id(0)"), "(program_id 0)");
    assert_eq!(e("f()"), "(f)");
    assert_eq!(e("f(a, b,)"), "(f a b)");
    assert_eq!(e("zeros([BM, BN], f32)"), "(zeros [BM, BN] f32)");
    assert_eq!(e("[]"), "[]");
    assert_eq!(e("range(BM)[:, None]"), "(index (range BM) [:, None])");
    assert_eq!(
        e("x[None, :][:, None]"),
        "(index (index x [None, :]) [:, None])"
    );
    assert_eq!(e("sum(x, axis: 1) as f32"), "(as (sum x axis: 1) f32)");
}

#[test]
fn every_statement_form() {
    let b = body(
        "let a = 1;
         let mut b: f32 = 2.0;
         b = b + a;
         b += 1.0; b -= 1.0; b *= 2.0; b /= 2.0;
         for i in 0..n step 4 { b += 1.0; }
         if a < 2 { b = 0.0; } else if a < 3 { b = 1.0; } else { b = 2.0; }
         static_assert(BLOCK % 32 == 0, \"BLOCK must be a \\\"multiple\\\" of 32\");
         static_assert(true);
         store(p, b);
         b",
    );
    let kinds: Vec<&StmtKind> = b.stmts.iter().map(|s| &s.kind).collect();
    assert_eq!(kinds.len(), 12);
    assert!(matches!(
        kinds[0],
        StmtKind::Let {
            mutable: false,
            ty: None,
            ..
        }
    ));
    let StmtKind::Let {
        mutable: true,
        ty: Some(t),
        ..
    } = kinds[1]
    else {
        panic!("{:?}", kinds[1])
    };
    assert_eq!(t.kind, TypeExprKind::Scalar(DType::F32));
    assert!(matches!(kinds[2], StmtKind::Assign { op: None, .. }));
    let ops: Vec<Option<BinOp>> = kinds[3..7]
        .iter()
        .map(|k| match k {
            StmtKind::Assign { op, .. } => *op,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        ops,
        [
            Some(BinOp::Add),
            Some(BinOp::Sub),
            Some(BinOp::Mul),
            Some(BinOp::Div)
        ]
    );
    assert!(matches!(kinds[7], StmtKind::For { step: Some(_), .. }));
    // `else if` is an else block holding one `if`.
    let StmtKind::If {
        else_block: Some(els),
        ..
    } = kinds[8]
    else {
        panic!("{:?}", kinds[8])
    };
    assert_eq!(els.stmts.len(), 1);
    assert!(els.tail.is_none());
    let StmtKind::If {
        else_block: Some(last),
        ..
    } = &els.stmts[0].kind
    else {
        panic!("{els:?}")
    };
    assert_eq!(last.stmts.len(), 1);
    let StmtKind::StaticAssert { message, .. } = kinds[9] else {
        panic!("{:?}", kinds[9])
    };
    assert_eq!(
        message.as_deref(),
        Some("BLOCK must be a \"multiple\" of 32")
    );
    assert!(matches!(
        kinds[10],
        StmtKind::StaticAssert { message: None, .. }
    ));
    assert!(matches!(kinds[11], StmtKind::Expr(_)));
    assert_eq!(b.tail.unwrap().kind, ExprKind::Name("b".into()));
}

#[test]
fn kernels_helpers_and_their_parameters() {
    let text = "// leading comment
        kernel k<BLOCK: i32 = 1024, NEG: i64 = -1, EPS: f32 = 1e-5, FLAG: bool = true, B2: i32 = BLOCK, N: i32>(
            x: *bf16, y: *mut f32, n: i32, /* trailing comma */
        ) { }
        fn silu(x: f32) { x * sigmoid(x) }
        fn softplus(x) { log(1.0 + exp(x)) }";
    let m = parse_module(text).unwrap();
    assert_eq!(
        print_module(&m),
        "(kernel k
  (const BLOCK i32 1024)
  (const NEG i64 (- 1))
  (const EPS f32 0.00001)
  (const FLAG bool true)
  (const B2 i32 BLOCK)
  (const N i32)
  (param x *bf16)
  (param y *mut f32)
  (param n i32)
  (block))
(fn silu
  (param x f32)
  (block
    (tail (* x (sigmoid x)))))
(fn softplus
  (param x)
  (block
    (tail (log (+ 1.0 (exp x))))))
"
    );
}

#[test]
fn spans_cover_the_source_of_each_node() {
    let text = "kernel k(y: *mut f32) {\n    let v = (a + b) * c as f32;\n    store(y, v);\n}";
    let m = parse_module(text).unwrap();
    let Item::Kernel(k) = &m.items[0] else {
        panic!()
    };
    let at = |s: Span| &text[s.start as usize..s.end as usize];
    assert_eq!(at(k.span), text);
    assert_eq!(at(k.name.span), "k");
    assert_eq!(at(k.params[0].span), "y: *mut f32");
    assert_eq!(at(k.params[0].ty.span), "*mut f32");
    let let_stmt = &k.body.stmts[0];
    assert_eq!(at(let_stmt.span), "let v = (a + b) * c as f32;");
    let StmtKind::Let { name, value, .. } = &let_stmt.kind else {
        panic!()
    };
    assert_eq!(at(name.span), "v");
    assert_eq!(at(value.span), "(a + b) * c as f32");
    let ExprKind::Binary { lhs, rhs, .. } = &value.kind else {
        panic!()
    };
    assert_eq!(at(lhs.span), "(a + b)");
    assert_eq!(at(rhs.span), "c as f32");
    assert_eq!(at(k.body.stmts[1].span), "store(y, v);");
    let StmtKind::Expr(call) = &k.body.stmts[1].kind else {
        panic!()
    };
    let ExprKind::Call { callee, args } = &call.kind else {
        panic!()
    };
    assert_eq!(at(callee.span), "store");
    assert_eq!(at(args[1].value.span), "v");
}

#[test]
fn comments_and_whitespace_are_skipped() {
    let b = body("/* a */ let /* b */ x = 1 // c\n ; // d\n x /* e */");
    assert_eq!(b.stmts.len(), 1);
    assert!(b.tail.is_some());
    assert_eq!(parse_module("").unwrap().items, vec![]);
    assert_eq!(parse_module("  // only a comment").unwrap().items, vec![]);
}

#[test]
fn errors_say_what_was_expected_and_what_was_found() {
    assert_eq!(
        err_in_body("let v = f(a;"),
        "2:12: expected `,` or `)`, found `;`"
    );
    assert_eq!(
        err_in_body("let v = ;"),
        "2:9: expected an expression, found `;`"
    );
    assert_eq!(
        err_in_body("let v = 1\nstore(y, v);"),
        "2:10: expected `;`, found `store`"
    );
    assert_eq!(
        err_in_body("let = 1;"),
        "2:5: expected a variable name, found `=`"
    );
    assert_eq!(
        err_in_body("let v = 1 +"),
        "3:1: expected an expression, found `}`"
    );
    assert_eq!(
        err_in_body("let v: float = 1.0;"),
        "2:8: unknown type `float`; the element types are bool, i32, i64, f16, bf16, f32"
    );
    assert_eq!(err("kernel k(x) {}"), "1:11: expected `:`, found `)`");
    assert_eq!(
        err("kernel (x: f32) {}"),
        "1:8: expected an identifier, found `(`"
    );
    assert_eq!(
        err("kernel k(x: f32)"),
        "1:17: expected `{`, found end of file"
    );
    assert_eq!(
        err("kernel k() {} }"),
        "1:15: expected `kernel` or `fn`, found `}`"
    );
    assert_eq!(
        err("kernel k() { let v = 1; "),
        "1:25: expected `}`, found end of file"
    );
    assert_eq!(
        err_in_body("let v = x[1];"),
        "2:11: expected `:` or `None`, found `1`"
    );
}

#[test]
fn a_bad_assignment_is_reported_inside_its_value() {
    // Not "expected `;`, found `=`" at the target: the assignment was recognised by its `=`.
    assert_eq!(
        err_in_body("acc = acc +;"),
        "2:12: expected an expression, found `;`"
    );
    assert_eq!(err_in_body("acc += 1 2;"), "2:9: expected `;`, found `2`");
}

#[test]
fn keywords_are_not_names() {
    assert!(err_in_body("let for = 1;").contains("keyword `for`"));
    assert!(err_in_body("let v = step + 1;").contains("keyword `step`"));
    assert!(err("fn let(x) { x }").contains("keyword `let`"));
    assert!(err("kernel k(in: i32) {}").contains("keyword `in`"));
    // A keyword prefix is still a name.
    assert_eq!(e("format + letter + iff"), "(+ (+ format letter) iff)");
}

#[test]
fn literal_errors() {
    assert_eq!(
        err_in_body("let v = 99999999999999999999;"),
        "2:9: integer literal `99999999999999999999` is out of range"
    );
    assert_eq!(
        err_in_body("let v = 0xFFFFFFFFFFFFFFFFF;"),
        "2:9: bad hexadecimal literal `0xFFFFFFFFFFFFFFFFF`"
    );
    assert_eq!(
        err_in_body("let v = 0x;"),
        "2:9: bad hexadecimal literal `0x`"
    );
    assert!(err_in_body("let v = 1e;").contains("exponent has no digits"));
    assert!(err_in_body("let v = 1e999;").contains("out of range"));
    assert!(err_in_body("let v = 1.5f;").contains("bad literal"));
    assert!(err_in_body("let v = .5;").starts_with("2:9: expected an expression"));
    assert!(err_in_body("static_assert(true, \"open);").contains("unterminated string"));
    assert!(err_in_body("static_assert(true, \"\\t\");").contains("unknown escape"));
}

#[test]
fn unterminated_comment_points_at_its_start() {
    assert_eq!(
        err("kernel k() {\n  /* never closed\n}\n"),
        "2:3: unterminated block comment"
    );
}

#[test]
fn unclosed_block_names_where_it_opened() {
    let d = parse_module("kernel k(n: i32) {\n  if n < 2 {\n    let v = 1;\n}\n").unwrap_err();
    assert_eq!(d.message, "expected `}`, found end of file");
    assert_eq!(d.notes.len(), 2, "{:?}", d.notes);
    assert!(d.notes[0].ends_with("opens at 1:18"), "{:?}", d.notes);
    assert!(
        d.notes[1].starts_with("the `{` at 2:12 is probably"),
        "{:?}",
        d.notes
    );
    // Consistent indentation gives no guess.
    let d = parse_module(
        "kernel k(n: i32) {
  if n < 2 {
    let v = 1;
  }
",
    )
    .unwrap_err();
    assert_eq!(d.notes.len(), 1, "{:?}", d.notes);
}

#[test]
fn else_needs_an_if() {
    assert!(err_in_body("else { }").contains("`else` without a preceding `if`"));
    assert_eq!(
        err_in_body("if c { } else x"),
        "2:15: expected `if` or `{`, found `x`"
    );
}

#[test]
fn nesting_is_limited_but_reasonable_depth_parses() {
    let ok = format!("{}x{}", "(".repeat(150), ")".repeat(150));
    assert_eq!(e(&ok), "x");
    let ifs = "if c { ".repeat(100) + &"}".repeat(100);
    assert_eq!(body(&ifs).stmts.len(), 1);
    // A flat chain builds a tree as deep as it is long: long ones count as nesting too.
    let chain = vec!["x"; 150].join(" + ");
    assert!(e(&chain).starts_with("(+ (+ (+"));
    let chain = vec!["x"; 250].join(" * ");
    assert!(err_in_body(&format!("let v = {chain};")).contains("nesting is deeper"));
    let casts = format!("x{}", " as f32".repeat(250));
    assert!(err_in_body(&format!("let v = {casts};")).contains("nesting is deeper"));
    let deep = format!("{}x{}", "(".repeat(250), ")".repeat(250));
    assert!(err_in_body(&format!("let v = {deep};")).contains("nesting is deeper"));
}

#[test]
fn errors_never_split_a_multibyte_character() {
    let msg = err_in_body("let v = é;");
    assert_eq!(msg, "2:9: expected an expression, found `é`");
}

#[test]
fn a_constant_default_is_not_an_expression() {
    let d = parse_module("kernel k<B: i32 = 128 * 2>(y: *mut f32) {}").unwrap_err();
    assert_eq!(d.message, "expected `,` or `>`, found `*`");
    assert_eq!(d.span.start, 22);
    assert!(d.notes[0].starts_with("a constant's default is a literal"));
    assert!(err("kernel k<B: i32 = >(y: *mut f32) {}").contains("a literal or a constant name"));
}

#[test]
fn the_found_token_is_one_token() {
    assert_eq!(
        err_in_body("for i 0..n { }"),
        "2:7: expected `in`, found `0`"
    );
    assert_eq!(
        err_in_body("let v = 1 2.5e3;"),
        "2:10: expected `;`, found `2.5e3`"
    );
    assert_eq!(
        err_in_body("let v = a b.c;"),
        "2:10: expected `;`, found `b`"
    );
}

/// Parse speed on the documented kernels and `ops/kernels/` (run in release:
/// `cargo test --release -p kiln-compiler --test compiler parse_speed -- --ignored --nocapture`).
#[test]
#[ignore]
fn parse_speed() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let docs = std::fs::read_to_string(root.join("docs/LANGUAGE.md")).unwrap();
    let mut sources: Vec<String> = docs
        .split("```kiln\n")
        .skip(1)
        .filter_map(|b| b.split("```").next().map(String::from))
        .filter(|b| parse_module(b).is_ok_and(|m| !m.items.is_empty()))
        .collect();
    let doc_blocks = sources.len();
    for entry in std::fs::read_dir(root.join("ops/kernels")).unwrap() {
        sources.push(std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    let bytes: usize = sources.iter().map(String::len).sum();
    let start = std::time::Instant::now();
    let mut rounds = 0u32;
    while start.elapsed().as_secs_f64() < 2.0 {
        for s in &sources {
            std::hint::black_box(parse_module(std::hint::black_box(s)).unwrap());
        }
        rounds += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let kb = (bytes as f64 * rounds as f64) / 1024.0;
    println!(
        "{} sources ({doc_blocks} from LANGUAGE.md), {bytes} bytes, {rounds} rounds: \
         {:.1} us/KB, {:.1} MB/s",
        sources.len(),
        secs * 1e6 / kb,
        kb / 1024.0 / secs
    );
}

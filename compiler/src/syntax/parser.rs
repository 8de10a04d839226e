//! The grammar: items, statements and expressions, as nom parsers over [`In`].
//!
//! Each parser skips the whitespace before its tokens. Once a form is recognised by its leading
//! token (`let`, `for`, `(` of a call, an operator, ...) the rest is parsed under [`commit`], so a
//! mistake is reported where it is rather than as "expected something else" at the form's start.

use super::ast::*;
use super::lex::{
    backtrack, commit, fatal, ident, kw, offset, sym, token_at, token_text, word, ws, Expected, In,
    PError, PResult,
};
use super::unclosed::likely_unclosed;
use crate::diag::{Diagnostic, Source};
use crate::types::DType;
use nom::bytes::complete::{take_while, take_while1};
use nom::{Input, Parser};
use std::cell::{Cell, RefCell};

/// How deeply expressions and blocks may nest before the parser refuses (the stack is finite).
const MAX_DEPTH: u32 = 200;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// The type parameters of the kernel being parsed: names that may stand where a type does.
    static TYPE_PARAMS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Makes `names` usable as types until the guard drops (the end of the kernel's body).
struct TypeParamScope;

impl TypeParamScope {
    fn enter(names: Vec<String>) -> TypeParamScope {
        TYPE_PARAMS.with(|t| *t.borrow_mut() = names);
        TypeParamScope
    }
}

impl Drop for TypeParamScope {
    fn drop(&mut self) {
        TYPE_PARAMS.with(|t| t.borrow_mut().clear());
    }
}

fn is_type_param(name: &str) -> bool {
    TYPE_PARAMS.with(|t| t.borrow().iter().any(|n| n == name))
}

/// Parses a whole source file.
pub fn parse_module(text: &str) -> Result<Module, Diagnostic> {
    DEPTH.with(|d| d.set(0));
    let _no_type_params = TypeParamScope::enter(vec![]);
    let input = In::new(text);
    match module(input) {
        Ok((_, m)) => Ok(m),
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(to_diagnostic(text, e)),
        Err(nom::Err::Incomplete(_)) => Err(Diagnostic::new(
            Span::new(text.len(), text.len()),
            "unexpected end of file",
        )),
    }
}

fn to_diagnostic(text: &str, e: PError) -> Diagnostic {
    let found = token_at(text, e.found_at.unwrap_or(e.offset));
    let message = match e.message {
        Some(m) => m,
        None if e.expected.is_empty() => format!("unexpected {found}"),
        None => format!("expected {}, found {found}", join_or(&e.expected)),
    };
    // The caret underlines the offending token, or one column where something is missing.
    let len = match e.found_at {
        Some(_) => 1,
        None => token_text(text, e.offset).len().max(1),
    };
    let end = (e.offset + len).min(text.len().max(e.offset));
    let mut d = Diagnostic::new(Span::new(e.offset, end), message);
    if let Some(open) = e.unclosed {
        let src = Source::new("", text);
        let at = |offset: usize| {
            let (line, col) = src.line_col(offset as u32);
            format!("{line}:{col}")
        };
        d = d.with_note(format!(
            "this block is never closed; it opens at {}",
            at(open)
        ));
        if let Some(inner) = likely_unclosed(text, open + 1) {
            d = d.with_note(format!(
                "the `{{` at {} is probably the one missing its `}}`: the `}}` matched with it \
                 is indented less than its line",
                at(inner)
            ));
        }
    }
    if let Some(hint) = e.hint {
        d = d.with_note(hint);
    }
    d
}

fn join_or(items: &[Expected]) -> String {
    let items: Vec<String> = items.iter().map(Expected::to_string).collect();
    match items.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Enters one level of nesting; fails once the limit is reached.
fn nest<'a, T>(i: In<'a>, f: impl FnOnce(In<'a>) -> PResult<'a, T>) -> PResult<'a, T> {
    let depth = DEPTH.with(|d| {
        d.set(d.get() + 1);
        d.get()
    });
    let r = if depth > MAX_DEPTH {
        fatal(PError::message(
            offset(&i),
            format!("nesting is deeper than {MAX_DEPTH} levels"),
        ))
    } else {
        // Debug builds use a lot of stack per level; grow it rather than overflow.
        stacker::maybe_grow(256 * 1024, 4 * 1024 * 1024, || f(i))
    };
    DEPTH.with(|d| d.set(d.get() - 1));
    r
}

/// Runs a parser that builds a left-leaning chain (`a + b + c`, `x as i64 as f32`, `x[:][None]`)
/// and may call [`deepen`] once per link; the depth it added is released at the end.
fn chain<'a, T>(i: In<'a>, f: impl FnOnce(In<'a>) -> PResult<'a, T>) -> PResult<'a, T> {
    let before = DEPTH.with(Cell::get);
    let r = f(i);
    DEPTH.with(|d| d.set(before));
    r
}

/// One more link of a chain: a flat chain builds a tree as deep as it is long, which the
/// checker walks recursively, so it counts as nesting.
fn deepen(at: usize) -> Result<(), nom::Err<PError>> {
    let depth = DEPTH.with(|d| {
        d.set(d.get() + 1);
        d.get()
    });
    if depth > MAX_DEPTH {
        return Err(nom::Err::Failure(PError::message(
            at,
            format!("nesting is deeper than {MAX_DEPTH} levels"),
        )));
    }
    Ok(())
}

fn span_from(start: usize, i: &In) -> Span {
    Span::new(start, last_end(i))
}

/// The end of the last token consumed: the current offset (callers call this before skipping
/// whitespace).
fn last_end(i: &In) -> usize {
    offset(i)
}

fn id(start: usize, name: &str) -> Ident {
    Ident {
        name: name.to_string(),
        span: Span::new(start, start + name.len()),
    }
}

// ---- items ----------------------------------------------------------------------------------

fn module(mut i: In) -> PResult<Module> {
    let mut items = vec![];
    loop {
        let (rest, _) = ws(i)?;
        i = rest;
        if i.fragment().is_empty() {
            return Ok((i, Module { items }));
        }
        let (rest, item) = nom::branch::alt((kernel, function))
            .parse(i)
            .map_err(|e| match e {
                nom::Err::Error(mut e) => {
                    if e.offset == offset(&i) {
                        e.expected = vec![Expected::Token("kernel"), Expected::Token("fn")];
                    }
                    nom::Err::Failure(e)
                }
                other => other,
            })?;
        items.push(item);
        i = rest;
    }
}

fn kernel(i: In) -> PResult<Item> {
    let (i, start) = kw("kernel")(i)?;
    commit(kernel_rest(i, start))
}

fn kernel_rest(i: In, start: usize) -> PResult<Item> {
    let (i, (ns, name)) = ident(i)?;
    let (i, consts) = match sym("<")(i) {
        Ok((i, _)) => {
            let (i, consts) = comma_list(i, const_param, ">")?;
            (i, consts)
        }
        Err(_) => (i, vec![]),
    };
    let type_params = consts
        .iter()
        .filter(|c: &&ConstParam| c.ty.kind == TypeExprKind::Type)
        .map(|c| c.name.name.clone())
        .collect();
    let _scope = TypeParamScope::enter(type_params);
    let (i, _) = sym("(")(i)?;
    let (i, params) = comma_list(i, param, ")")?;
    let (i, body) = block(i)?;
    let span = span_from(start, &i);
    Ok((
        i,
        Item::Kernel(Kernel {
            name: id(ns, name),
            consts,
            params,
            body,
            span,
        }),
    ))
}

fn function(i: In) -> PResult<Item> {
    let (i, start) = kw("fn")(i)?;
    commit((|i| {
        let (i, (ns, name)) = ident(i)?;
        let (i, _) = sym("(")(i)?;
        let (i, params) = comma_list(i, fn_param, ")")?;
        // An untyped parameter may carry an element type (`f(x, T)`): it can stand as one.
        let type_args = params
            .iter()
            .filter(|p: &&FnParam| p.ty.is_none())
            .map(|p| p.name.name.clone())
            .collect();
        let _scope = TypeParamScope::enter(type_args);
        let (i, body) = block(i)?;
        let span = span_from(start, &i);
        Ok((
            i,
            Item::Function(Function {
                name: id(ns, name),
                params,
                body,
                span,
            }),
        ))
    })(i))
}

/// `item, item, ... close` with an optional trailing comma; consumes `close`.
fn comma_list<'a, T>(
    mut i: In<'a>,
    item: impl Fn(In<'a>) -> PResult<'a, T>,
    close: &'static str,
) -> PResult<'a, Vec<T>> {
    let mut out = vec![];
    loop {
        if let Ok((rest, _)) = sym(close)(i) {
            return Ok((rest, out));
        }
        let (rest, x) = item(i)?;
        out.push(x);
        i = rest;
        match sym(",")(i) {
            Ok((rest, _)) => i = rest,
            Err(_) => {
                let (rest, _) = sym(close)(i).map_err(|e| add_expected(e, Expected::Token(",")))?;
                return Ok((rest, out));
            }
        }
    }
}

fn add_expected(e: nom::Err<PError>, what: Expected) -> nom::Err<PError> {
    e.map(|mut e| {
        e.expected.insert(0, what);
        e
    })
}

fn const_param(i: In) -> PResult<ConstParam> {
    let (i, (ns, name)) = named(i, "a constant name")?;
    let (i, _) = sym(":")(i)?;
    let (i, ty) = match kw_type(i) {
        Ok(r) => r,
        Err(_) => type_expr(i)?,
    };
    let (i, default) = match sym("=")(i) {
        Ok((i, _)) => {
            let (i, e) = const_default(i)?;
            // `>` closes the list, so a default cannot be a general expression; say so.
            if let Some((_, (op, at))) = binary_op(i) {
                if op != BinOp::Gt {
                    let mut e = PError::expected(at, Expected::Token(","));
                    e.expected.push(Expected::Token(">"));
                    e.hint = Some(
                        "a constant's default is a literal, `-literal`, `true`, `false` \
                         or the name of an earlier constant",
                    );
                    return fatal(e);
                }
            }
            (i, Some(e))
        }
        Err(_) => (i, None),
    };
    let span = span_from(ns, &i);
    Ok((
        i,
        ConstParam {
            name: id(ns, name),
            ty,
            default,
            span,
        },
    ))
}

/// `type`, the kind of a type parameter. Not a keyword: only a constant's header reads it.
fn kw_type(i: In) -> PResult<TypeExpr> {
    let (i, (start, w)) = word(i)?;
    if w != "type" {
        return backtrack(start, Expected::What("a type"));
    }
    let span = span_from(start, &i);
    Ok((
        i,
        TypeExpr {
            kind: TypeExprKind::Type,
            span,
        },
    ))
}

/// A constant's default: a literal, `-literal`, `true`/`false`, or an earlier constant's name.
fn const_default(i: In) -> PResult<Expr> {
    let r = nom::branch::alt((
        |i| {
            let (i, start) = sym("-")(i)?;
            let (i, e) = number(i)?;
            let span = span_from(start, &i);
            Ok((
                i,
                Expr {
                    kind: ExprKind::Unary {
                        op: UnOp::Neg,
                        operand: Box::new(e),
                    },
                    span,
                },
            ))
        },
        number,
        bool_lit,
        |i| {
            let (i, (s, n)) = ident(i)?;
            Ok((
                i,
                Expr {
                    kind: ExprKind::Name(n.to_string()),
                    span: Span::new(s, s + n.len()),
                },
            ))
        },
    ))
    .parse(i);
    r.map_err(|e| {
        e.map(|mut e| {
            e.expected = vec![Expected::What("a literal or a constant name")];
            e
        })
    })
}

fn param(i: In) -> PResult<Param> {
    let (i, (ns, name)) = named(i, "a parameter name")?;
    let (i, _) = sym(":")(i)?;
    let (i, ty) = type_expr(i)?;
    let span = span_from(ns, &i);
    Ok((
        i,
        Param {
            name: id(ns, name),
            ty,
            span,
        },
    ))
}

fn fn_param(i: In) -> PResult<FnParam> {
    let (i, (ns, name)) = named(i, "a parameter name")?;
    let (i, ty) = match sym(":")(i) {
        Ok((i, _)) => {
            let (i, t) = type_expr(i)?;
            (i, Some(t))
        }
        Err(_) => (i, None),
    };
    let span = span_from(ns, &i);
    Ok((
        i,
        FnParam {
            name: id(ns, name),
            ty,
            span,
        },
    ))
}

/// An identifier, with a precise message when a keyword stands where a name should.
fn named<'a>(i: In<'a>, what: &'static str) -> PResult<'a, (usize, &'a str)> {
    match ident(i) {
        Ok(r) => Ok(r),
        Err(_) => {
            if let Ok((_, (s, w))) = word(i) {
                return fatal(PError::message(
                    s,
                    format!(
                        "expected {what}, found keyword `{w}`; keywords cannot be used as names"
                    ),
                ));
            }
            let (i, _) = ws(i)?;
            backtrack(offset(&i), Expected::What(what))
        }
    }
}

fn type_expr(i: In) -> PResult<TypeExpr> {
    let (i, _) = ws(i)?;
    let start = offset(&i);
    let (i, ptr) = match sym("*")(i) {
        Ok((i, _)) => {
            let (i, m) = match kw("mut")(i) {
                Ok((i, _)) => (i, true),
                Err(_) => (i, false),
            };
            (i, Some(m))
        }
        Err(_) => (i, None),
    };
    let (i, (ws_start, w)) = word(i).map_err(|e| {
        e.map(|e| PError {
            expected: vec![Expected::What("a type")],
            ..e
        })
    })?;
    let Some(d) = DType::from_name(w) else {
        if is_type_param(w) {
            let kind = TypeExprKind::Param {
                name: w.to_string(),
                ptr,
            };
            let span = span_from(start, &i);
            return Ok((i, TypeExpr { kind, span }));
        }
        let names: Vec<&str> = DType::ALL.iter().map(|d| d.name()).collect();
        return fatal(PError::message(
            ws_start,
            format!(
                "unknown type `{w}`; the element types are {}",
                names.join(", ")
            ),
        ));
    };
    let kind = match ptr {
        Some(mutable) => TypeExprKind::Ptr {
            pointee: d,
            mutable,
        },
        None => TypeExprKind::Scalar(d),
    };
    let span = span_from(start, &i);
    Ok((i, TypeExpr { kind, span }))
}

// ---- statements -----------------------------------------------------------------------------

fn block(i: In) -> PResult<Block> {
    let (i, open) = sym("{")(i)?;
    nest(i, |i| block_rest(i, open))
}

fn block_rest(mut i: In, open: usize) -> PResult<Block> {
    let mut stmts = vec![];
    loop {
        let (rest, _) = ws(i)?;
        i = rest;
        if let Ok((rest, _)) = sym("}")(i) {
            let span = span_from(open, &rest);
            return Ok((
                rest,
                Block {
                    stmts,
                    tail: None,
                    span,
                },
            ));
        }
        if i.fragment().is_empty() {
            let mut e = PError::expected(offset(&i), Expected::Token("}"));
            e.unclosed = Some(open);
            return fatal(e);
        }
        match statement(i)? {
            (rest, StmtOrTail::Stmt(s)) => {
                stmts.push(*s);
                i = rest;
            }
            (rest, StmtOrTail::Tail(e)) => {
                let (rest, _) = sym("}")(rest).map_err(|e| {
                    e.map(|mut e| {
                        e.expected = vec![Expected::Token(";"), Expected::Token("}")];
                        e
                    })
                })?;
                let span = span_from(open, &rest);
                return Ok((
                    rest,
                    Block {
                        stmts,
                        tail: Some(Box::new(e)),
                        span,
                    },
                ));
            }
        }
    }
}

enum StmtOrTail {
    Stmt(Box<Stmt>),
    Tail(Expr),
}

fn statement(i: In) -> PResult<StmtOrTail> {
    if let Ok((i, start)) = kw("let")(i) {
        return commit(let_stmt(i, start)).map(|(i, s)| (i, StmtOrTail::Stmt(Box::new(s))));
    }
    if let Ok((i, start)) = kw("for")(i) {
        return commit(for_stmt(i, start)).map(|(i, s)| (i, StmtOrTail::Stmt(Box::new(s))));
    }
    if let Ok((i, start)) = kw("if")(i) {
        return commit(if_stmt(i, start)).map(|(i, s)| (i, StmtOrTail::Stmt(Box::new(s))));
    }
    if let Ok((i, start)) = kw("static_assert")(i) {
        return commit(static_assert(i, start)).map(|(i, s)| (i, StmtOrTail::Stmt(Box::new(s))));
    }
    if let Ok((_, start)) = kw("else")(i) {
        return fatal(PError::message(start, "`else` without a preceding `if`"));
    }
    match assignment(i) {
        Ok((rest, s)) => return Ok((rest, StmtOrTail::Stmt(Box::new(s)))),
        // Past the `=`: the error is inside the assignment; reparsing as an expression would
        // only report "expected `;`, found `=`".
        Err(e @ nom::Err::Failure(_)) => return Err(e),
        Err(_) => {}
    }
    let (i, e) = commit(expr(i))?;
    // An expression without `;` right before `}` is the block's value.
    if sym("}")(i).is_ok() {
        return Ok((i, StmtOrTail::Tail(e)));
    }
    let (i, _) = semicolon(i)?;
    let span = Span::new(e.span.start as usize, last_end(&i));
    Ok((
        i,
        StmtOrTail::Stmt(Box::new(Stmt {
            kind: StmtKind::Expr(e),
            span,
        })),
    ))
}

/// A `;` ending a statement. When it is missing, the caret goes right after the statement
/// (where the `;` belongs), not at the next token, which is often on the next line.
fn semicolon(i: In) -> PResult<usize> {
    sym(";")(i).or_else(|_| {
        let end = offset(&i);
        let (after, _) = ws(i)?;
        let mut e = PError::expected(end, Expected::Token(";"));
        e.found_at = Some(offset(&after));
        fatal(e)
    })
}

fn let_stmt(i: In, start: usize) -> PResult<Stmt> {
    let (i, mutable) = match kw("mut")(i) {
        Ok((i, _)) => (i, true),
        Err(_) => (i, false),
    };
    let (i, (ns, name)) = named(i, "a variable name")?;
    let (i, ty) = match sym(":")(i) {
        Ok((i, _)) => {
            let (i, t) = type_expr(i)?;
            (i, Some(t))
        }
        Err(_) => (i, None),
    };
    let (i, _) = sym("=")(i)?;
    let (i, value) = expr(i)?;
    let (i, _) = semicolon(i)?;
    let span = span_from(start, &i);
    Ok((
        i,
        Stmt {
            kind: StmtKind::Let {
                name: id(ns, name),
                mutable,
                ty,
                value,
            },
            span,
        },
    ))
}

fn assignment(i: In) -> PResult<Stmt> {
    let (i, (ns, name)) = ident(i)?;
    let ops: [(&str, Option<BinOp>); 5] = [
        ("=", None),
        ("+=", Some(BinOp::Add)),
        ("-=", Some(BinOp::Sub)),
        ("*=", Some(BinOp::Mul)),
        ("/=", Some(BinOp::Div)),
    ];
    for (s, op) in ops {
        if let Ok((i, _)) = sym(s)(i) {
            let (i, value) = commit(expr(i))?;
            let (i, _) = commit(semicolon(i))?;
            let span = span_from(ns, &i);
            return Ok((
                i,
                Stmt {
                    kind: StmtKind::Assign {
                        target: id(ns, name),
                        op,
                        value,
                    },
                    span,
                },
            ));
        }
    }
    backtrack(ns, Expected::What("an assignment"))
}

fn for_stmt(i: In, start: usize) -> PResult<Stmt> {
    let (i, (ns, var)) = named(i, "a loop variable")?;
    let (i, _) = kw("in")(i)?;
    let (i, lo) = expr(i)?;
    let (i, _) = sym("..")(i)?;
    let (i, hi) = expr(i)?;
    let (i, step) = match kw("step")(i) {
        Ok((i, _)) => {
            let (i, s) = expr(i)?;
            (i, Some(s))
        }
        Err(_) => (i, None),
    };
    let (i, body) = block(i)?;
    let span = span_from(start, &i);
    Ok((
        i,
        Stmt {
            kind: StmtKind::For {
                var: id(ns, var),
                start: lo,
                end: hi,
                step,
                body,
            },
            span,
        },
    ))
}

fn if_stmt(i: In, start: usize) -> PResult<Stmt> {
    let (i, cond) = expr(i)?;
    let (i, then_block) = block(i)?;
    let (i, else_block) = match kw("else")(i) {
        Ok((i, _)) => match kw("if")(i) {
            Ok((i, if_start)) => {
                let (i, nested) = nest(i, |i| if_stmt(i, if_start))?;
                let span = nested.span;
                (
                    i,
                    Some(Block {
                        stmts: vec![nested],
                        tail: None,
                        span,
                    }),
                )
            }
            Err(_) => {
                let (i, b) = block(i).map_err(|e| add_expected(e, Expected::Token("if")))?;
                (i, Some(b))
            }
        },
        Err(_) => (i, None),
    };
    let span = span_from(start, &i);
    Ok((
        i,
        Stmt {
            kind: StmtKind::If {
                cond,
                then_block,
                else_block,
            },
            span,
        },
    ))
}

fn static_assert(i: In, start: usize) -> PResult<Stmt> {
    let (i, _) = sym("(")(i)?;
    let (i, cond) = expr(i)?;
    let (i, message) = match sym(",")(i) {
        Ok((i, _)) => {
            let (i, m) = string(i)?;
            (i, Some(m))
        }
        Err(_) => (i, None),
    };
    let (i, _) = sym(")")(i)?;
    let (i, _) = semicolon(i)?;
    let span = span_from(start, &i);
    Ok((
        i,
        Stmt {
            kind: StmtKind::StaticAssert { cond, message },
            span,
        },
    ))
}

fn string(i: In) -> PResult<String> {
    let (i, start) = sym("\"")(i)?;
    let mut out = String::new();
    let mut chars = i.fragment().char_indices();
    while let Some((k, c)) = chars.next() {
        match c {
            '"' => return Ok((i.take_from(k + 1), out)),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, c @ ('"' | '\\'))) => out.push(c),
                _ => {
                    return fatal(PError::message(
                        offset(&i) + k,
                        "unknown escape in string; use \\\", \\\\ or \\n",
                    ))
                }
            },
            '\n' => break,
            c => out.push(c),
        }
    }
    fatal(PError::message(start, "unterminated string"))
}

// ---- expressions ----------------------------------------------------------------------------

/// An expression: operators by precedence climbing over casts of unary expressions.
pub fn expr(i: In) -> PResult<Expr> {
    nest(i, |i| binary(i, 0))
}

/// The binary operator next in the input, if any. Most calls find none (the operand is followed
/// by `,` `)` `;`), so one look at the next character settles them.
fn binary_op(i: In) -> Option<(In, (BinOp, usize))> {
    const OPS: [(&str, BinOp); 18] = [
        ("||", BinOp::LogicalOr),
        ("&&", BinOp::LogicalAnd),
        ("==", BinOp::Eq),
        ("!=", BinOp::Ne),
        ("<=", BinOp::Le),
        (">=", BinOp::Ge),
        ("<<", BinOp::Shl),
        (">>", BinOp::Shr),
        ("<", BinOp::Lt),
        (">", BinOp::Gt),
        ("|", BinOp::BitOr),
        ("^", BinOp::BitXor),
        ("&", BinOp::BitAnd),
        ("+", BinOp::Add),
        ("-", BinOp::Sub),
        ("*", BinOp::Mul),
        ("/", BinOp::Div),
        ("%", BinOp::Rem),
    ];
    let (i, _) = ws(i).ok()?;
    if !i.fragment().starts_with(|c| "|&=!<>^+-*/%".contains(c)) {
        return None;
    }
    OPS.iter()
        .find_map(|&(s, op)| sym(s)(i).ok().map(|(rest, at)| (rest, (op, at))))
}

fn is_comparison(op: BinOp) -> bool {
    matches!(
        op,
        BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
    )
}

fn binary(i: In, min_prec: u8) -> PResult<Expr> {
    chain(i, |i| binary_chain(i, min_prec))
}

fn binary_chain(i: In, min_prec: u8) -> PResult<Expr> {
    let (mut i, mut lhs) = cast(i)?;
    let mut compared = false;
    loop {
        let Some((rest, (op, at))) = binary_op(i) else {
            return Ok((i, lhs));
        };
        let prec = op.precedence();
        if prec < min_prec {
            return Ok((i, lhs));
        }
        if is_comparison(op) && compared {
            return fatal(PError::message(
                at,
                "comparison operators cannot be chained; use `&&` to combine comparisons",
            ));
        }
        deepen(at)?;
        let (rest, rhs) = commit(nest(rest, |r| binary(r, prec + 1)))?;
        compared = is_comparison(op);
        let span = lhs.span.to(rhs.span);
        lhs = Expr {
            kind: ExprKind::Binary {
                op,
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
            },
            span,
        };
        i = rest;
    }
}

fn cast(i: In) -> PResult<Expr> {
    chain(i, cast_chain)
}

fn cast_chain(i: In) -> PResult<Expr> {
    let (mut i, mut e) = unary(i)?;
    while let Ok((rest, at)) = kw("as")(i) {
        deepen(at)?;
        let (rest, ty) = commit(type_expr(rest))?;
        let span = e.span.to(ty.span);
        e = Expr {
            kind: ExprKind::Cast {
                value: Box::new(e),
                ty,
            },
            span,
        };
        i = rest;
    }
    Ok((i, e))
}

fn unary(i: In) -> PResult<Expr> {
    for (s, op) in [("-", UnOp::Neg), ("!", UnOp::Not)] {
        if let Ok((rest, start)) = sym(s)(i) {
            let (rest, operand) = commit(nest(rest, unary))?;
            let span = Span::new(start, operand.span.end as usize);
            return Ok((
                rest,
                Expr {
                    kind: ExprKind::Unary {
                        op,
                        operand: Box::new(operand),
                    },
                    span,
                },
            ));
        }
    }
    postfix(i)
}

fn postfix(i: In) -> PResult<Expr> {
    chain(i, postfix_chain)
}

fn postfix_chain(i: In) -> PResult<Expr> {
    let (mut i, mut e) = primary(i)?;
    while let Ok((rest, at)) = sym("[")(i) {
        deepen(at)?;
        let (rest, items) = commit(comma_list(rest, index_item, "]"))?;
        let span = Span::new(e.span.start as usize, last_end(&rest));
        e = Expr {
            kind: ExprKind::Index {
                base: Box::new(e),
                items,
            },
            span,
        };
        i = rest;
    }
    Ok((i, e))
}

fn index_item(i: In) -> PResult<IndexItem> {
    if let Ok((i, _)) = sym(":")(i) {
        return Ok((i, IndexItem::Full));
    }
    if let Ok((i, _)) = kw("None")(i) {
        return Ok((i, IndexItem::NewAxis));
    }
    let (i, _) = ws(i)?;
    let mut e = PError::expected(offset(&i), Expected::Token(":"));
    e.expected.push(Expected::Token("None"));
    Err(nom::Err::Error(e))
}

fn primary(i: In) -> PResult<Expr> {
    let (i, _) = ws(i)?;
    let start = offset(&i);
    if i.fragment().starts_with(|c: char| c.is_ascii_digit()) {
        return number(i);
    }
    if let Ok(r) = bool_lit(i) {
        return Ok(r);
    }
    if let Ok((rest, (s, name))) = ident(i) {
        if let Ok((rest, _)) = sym("(")(rest) {
            let (rest, args) = commit(comma_list(rest, arg, ")"))?;
            let span = Span::new(s, last_end(&rest));
            return Ok((
                rest,
                Expr {
                    kind: ExprKind::Call {
                        callee: id(s, name),
                        args,
                    },
                    span,
                },
            ));
        }
        return Ok((
            rest,
            Expr {
                kind: ExprKind::Name(name.to_string()),
                span: Span::new(s, s + name.len()),
            },
        ));
    }
    if let Ok((rest, _)) = sym("(")(i) {
        let (rest, inner) = commit(expr(rest))?;
        let (rest, _) =
            commit(sym(")")(rest).map_err(|e| add_expected(e, Expected::What("an operator"))))?;
        return Ok((
            rest,
            Expr {
                span: Span::new(start, last_end(&rest)),
                ..inner
            },
        ));
    }
    if let Ok((rest, _)) = sym("[")(i) {
        let (rest, items) = commit(comma_list(rest, expr, "]"))?;
        return Ok((
            rest,
            Expr {
                kind: ExprKind::List(items),
                span: Span::new(start, last_end(&rest)),
            },
        ));
    }
    if let Ok((_, (s, w))) = word(i) {
        if w != "None" {
            return fatal(PError::message(
                s,
                format!("expected an expression, found keyword `{w}`"),
            ));
        }
    }
    backtrack(start, Expected::What("an expression"))
}

fn arg(i: In) -> PResult<Arg> {
    if let Ok((rest, (s, name))) = ident(i) {
        if let Ok((rest, _)) = sym(":")(rest) {
            let (rest, value) = commit(expr(rest))?;
            return Ok((
                rest,
                Arg {
                    name: Some(id(s, name)),
                    value,
                },
            ));
        }
    }
    let (i, value) = expr(i)?;
    Ok((i, Arg { name: None, value }))
}

fn bool_lit(i: In) -> PResult<Expr> {
    let (rest, (s, w)) = word(i)?;
    match w {
        "true" | "false" => Ok((
            rest,
            Expr {
                kind: ExprKind::Bool(w == "true"),
                span: Span::new(s, s + w.len()),
            },
        )),
        _ => backtrack(s, Expected::What("`true` or `false`")),
    }
}

/// Integer (`42`, `1_000`, `0x1F`) or float (`1.0`, `1e-6`, `2.5e3`) literal. A `.` is part of a
/// number only when a digit follows, so `0..n` is `0`, `..`, `n`.
fn number(i: In) -> PResult<Expr> {
    let (i, _) = ws(i)?;
    let start = offset(&i);
    let text = *i.fragment();
    if !text.starts_with(|c: char| c.is_ascii_digit()) {
        return backtrack(start, Expected::What("a number"));
    }
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        let digits: String = hex
            .chars()
            .take_while(|c| c.is_ascii_hexdigit() || *c == '_')
            .collect();
        let len = 2 + digits.len();
        let value = i64::from_str_radix(&digits.replace('_', ""), 16).map_err(|_| {
            nom::Err::Failure(PError::message(
                start,
                format!("bad hexadecimal literal `{}`", &text[..len]),
            ))
        })?;
        let rest = i.take_from(len);
        return literal_end(rest, start, ExprKind::Int(value));
    }
    let (_, int_part) = take_while1(|c: char| c.is_ascii_digit() || c == '_').parse(i)?;
    let mut len = int_part.fragment().len();
    let mut is_float = false;
    let after = &text[len..];
    if after.starts_with('.') && after[1..].starts_with(|c: char| c.is_ascii_digit()) {
        let frac = after[1..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '_')
            .count();
        len += 1 + frac;
        is_float = true;
    }
    let after = &text[len..];
    if after.starts_with(['e', 'E']) {
        let sign = usize::from(after[1..].starts_with(['+', '-']));
        let digits = after[1 + sign..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits == 0 {
            return fatal(PError::message(
                start,
                format!(
                    "bad float literal `{}`: the exponent has no digits",
                    &text[..len + 1 + sign]
                ),
            ));
        }
        len += 1 + sign + digits;
        is_float = true;
    }
    let lit = text[..len].replace('_', "");
    let rest = i.take_from(len);
    let kind = if is_float {
        match lit.parse::<f64>() {
            Ok(v) if v.is_finite() => ExprKind::Float(v),
            _ => {
                return fatal(PError::message(
                    start,
                    format!("float literal `{}` is out of range", &text[..len]),
                ))
            }
        }
    } else {
        match lit.parse::<i64>() {
            Ok(v) => ExprKind::Int(v),
            Err(_) => {
                return fatal(PError::message(
                    start,
                    format!("integer literal `{}` is out of range", &text[..len]),
                ))
            }
        }
    };
    literal_end(rest, start, kind)
}

/// A literal may not run into a letter: `12abc` or `1.5f` is a mistake, not two tokens.
fn literal_end(rest: In, start: usize, kind: ExprKind) -> PResult<Expr> {
    let (_, tail) = take_while(|c: char| c.is_ascii_alphanumeric() || c == '_').parse(rest)?;
    if !tail.fragment().is_empty() {
        return fatal(PError::message(
            start,
            format!(
                "bad literal: unexpected `{}` after the number",
                tail.fragment()
            ),
        ));
    }
    let span = Span::new(start, offset(&rest));
    Ok((rest, Expr { kind, span }))
}

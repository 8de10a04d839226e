//! Every builtin in one table: its names, how it is called, what it does, and the function that
//! checks a call to it. The checker finds a call's builtin here ([`lookup`]), and the builtins
//! section of `docs/LANGUAGE.md` is generated from it ([`reference`]; a test keeps the two
//! equal), so a builtin cannot be added without its documentation, nor documented without
//! existing.

use super::builtins::{unary_math, Args};
use super::checker::{Checker, R};
use super::value::Val;

/// Checks a call: the checker, the call's arguments, and the name it was called by.
type Handler = fn(&mut Checker<'_>, &Args, &str) -> R<Val>;

/// One entry of the builtins table: one row of the reference.
pub struct Builtin {
    /// The names it is called by.
    pub names: &'static [&'static str],
    /// How it is called, as the reference writes it (Markdown).
    pub forms: &'static str,
    /// What it does (Markdown).
    pub doc: &'static str,
    /// Takes the call only when this holds (`max(a, b)` is elementwise, `max(x)` a
    /// reduction); `None`: every call of its names.
    when: Option<fn(&Args) -> bool>,
    pub(super) check: Handler,
}

const fn builtin(
    names: &'static [&'static str],
    forms: &'static str,
    doc: &'static str,
    check: Handler,
) -> Builtin {
    Builtin {
        names,
        forms,
        doc,
        when: None,
        check,
    }
}

/// Every builtin, in the order of the reference.
pub const BUILTINS: &[Builtin] = &[
    builtin(
        &["program_id", "num_programs"],
        "`program_id(axis)`, `num_programs(axis)`",
        "`i32` scalar: this program's index in the grid, the grid's size; `axis` is 0, 1 or 2",
        |c, a, n| c.check_grid_index(a, n),
    ),
    builtin(
        &["range"],
        "`range(N)`",
        "`<N x i32>`: 0, 1, ..., N-1 (`N` a constant power of two)",
        |c, a, n| c.check_range(a, n),
    ),
    builtin(
        &["zeros", "full"],
        "`zeros([A, B], T)`, `full([A, B], value, T)`",
        "a tile of `T` filled with 0 or `value`",
        |c, a, n| c.check_fill(a, n),
    ),
    builtin(
        &["load"],
        "`load(p, mask: m, other: v)`",
        "reads through a pointer tile; masked-off lanes give `other` (default 0); `mask:` and \
         `other:` are optional",
        |c, a, _| c.load(a),
    ),
    builtin(
        &["store"],
        "`store(p, v, mask: m)`",
        "writes `v` through `p` where `m` is true (mask optional)",
        |c, a, _| c.store(a, false),
    ),
    builtin(
        &["atomic_add"],
        "`atomic_add(p, v, mask: m)`",
        "atomically adds `v` (`f32` or `i32`) where `m` is true (mask optional)",
        |c, a, _| c.store(a, true),
    ),
    builtin(
        &["where"],
        "`where(c, a, b)`",
        "`a` where `c`, else `b`, elementwise",
        |c, a, n| c.check_where(a, n),
    ),
    builtin(
        &[
            "exp", "exp2", "log", "log2", "sqrt", "rsqrt", "sigmoid", "tanh", "sin", "cos",
        ],
        "`exp exp2 log log2 sqrt rsqrt sigmoid tanh sin cos`",
        "elementwise math on floats (integers are refused: cast them with `as f32`)",
        |c, a, n| c.check_math(a, n),
    ),
    builtin(
        &["abs"],
        "`abs(x)`",
        "elementwise absolute value of floats or integers",
        |c, a, n| c.check_abs(a, n),
    ),
    builtin(
        &["fma"],
        "`fma(a, b, c)`",
        "`a * b + c` of floats, one rounding",
        |c, a, n| c.check_fma(a, n),
    ),
    Builtin {
        when: Some(|a| a.positional.len() == 2),
        ..builtin(
            &["max", "min"],
            "`max(a, b)`, `min(a, b)`",
            "elementwise (NaN if either is NaN)",
            |c, a, n| c.check_min_max(a, n),
        )
    },
    builtin(
        &["sum", "max", "min", "argmax"],
        "`sum(x)`, `max(x)`, `min(x)`, `argmax(x)`; `sum(x, axis: k)`, ...",
        "reduce over all axes to a scalar; with `axis: k`, along axis `k`, which disappears \
         (`argmax` gives an `i32` index)",
        |c, a, n| c.check_reduction(a, n),
    ),
    builtin(
        &["reshape", "broadcast"],
        "`reshape(x, [A, B])`, `broadcast(x, [A, B])`",
        "the same elements in another shape; size-1 axes repeated to a larger shape",
        |c, a, n| c.check_reshape(a, n),
    ),
    builtin(
        &["trans"],
        "`trans(x)`",
        "the transpose of a 2-D tile",
        |c, a, n| c.check_trans(a, n),
    ),
    builtin(
        &["dot"],
        "`dot(a, b)`, `dot(a, b, acc)`",
        "`<M x K> @ <K x N>` (+ `acc`, `<M x N x f32>`), accumulated in `f32`",
        |c, a, _| c.dot(a),
    ),
    builtin(
        &["cdiv"],
        "`cdiv(a, b)`",
        "`(a + b - 1) / b` of integers",
        |c, a, n| c.check_cdiv(a, n),
    ),
];

/// The builtin a call of `name` with arguments `a` is checked by, if `name` is a builtin.
pub(super) fn lookup(name: &str, a: &Args) -> Option<&'static Builtin> {
    BUILTINS
        .iter()
        .find(|b| b.names.contains(&name) && b.when.is_none_or(|w| w(a)))
}

/// Whether `name` is a builtin's name.
pub fn is_builtin(name: &str) -> bool {
    BUILTINS.iter().any(|b| b.names.contains(&name))
}

/// The builtins section of the language reference (`docs/LANGUAGE.md`), as Markdown: one table
/// row per entry of [`BUILTINS`].
pub fn reference() -> String {
    let mut out = String::from("| builtin | result |\n| --- | --- |\n");
    for b in BUILTINS {
        out += &format!("| {} | {} |\n", b.forms, b.doc);
    }
    out
}

impl Checker<'_> {
    /// The unary math functions (`exp`, `log`, ...).
    fn check_math(&mut self, a: &Args, name: &str) -> R<Val> {
        a.expect_named(&[])?;
        a.expect_count(1, 1)?;
        let u = unary_math(name).expect("a math builtin");
        self.math1(u, a.arg(0), name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_math_function_is_in_the_table() {
        for name in ["exp", "exp2", "log", "log2", "sqrt", "rsqrt"] {
            assert!(unary_math(name).is_some() && is_builtin(name), "{name}");
        }
        assert!(!is_builtin("maximum"));
    }

    #[test]
    fn the_reference_has_a_row_per_entry() {
        let text = reference();
        assert_eq!(text.lines().count(), BUILTINS.len() + 2);
        assert!(text.contains("| `cdiv(a, b)` |"), "{text}");
    }
}

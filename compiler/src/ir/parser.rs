//! Reads the IR text form written by [`print_kernel`](super::print_kernel), so that passes can be
//! tested text-in, text-out. Printing a parsed kernel gives back the same text.

use super::{
    BinaryOp, Builder, CmpPred, ConstValue, Elem, Kernel, Op, ParamKind, ReduceOp, Type, UnaryOp,
    Value,
};
use crate::types::DType;
use std::collections::HashMap;

/// A problem in IR text, with its 1-based line.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("IR text line {line}: {message}")]
pub struct IrParseError {
    pub line: usize,
    pub message: String,
}

/// Parses one kernel in the IR text form. A `;` starts a comment that runs to the end of the
/// line (the annotations of `--emit layouts` are comments).
pub fn parse_kernel(text: &str) -> Result<Kernel, IrParseError> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.split(';').next().unwrap_or("").trim()))
        .filter(|(_, l)| !l.is_empty())
        .collect();
    let mut p = IrParser {
        lines,
        pos: 0,
        names: HashMap::new(),
        b: Builder::new(""),
    };
    p.kernel()
}

struct IrParser<'a> {
    lines: Vec<(usize, &'a str)>,
    pos: usize,
    names: HashMap<String, Value>,
    b: Builder,
}

type PResult<T> = Result<T, IrParseError>;

impl<'a> IrParser<'a> {
    fn err<T>(&self, message: impl Into<String>) -> PResult<T> {
        let line = self.lines.get(self.pos).map_or(0, |l| l.0);
        Err(IrParseError {
            line,
            message: message.into(),
        })
    }

    fn next_line(&mut self) -> PResult<&'a str> {
        let Some(&(_, l)) = self.lines.get(self.pos) else {
            return self.err("unexpected end of text");
        };
        self.pos += 1;
        Ok(l)
    }

    fn kernel(&mut self) -> PResult<Kernel> {
        let header = self.next_line()?;
        let rest = header
            .strip_prefix("kernel @")
            .and_then(|r| r.strip_suffix(") {"));
        let Some(rest) = rest else {
            self.pos -= 1;
            return self.err("expected `kernel @name(...) {`");
        };
        let (name_consts, params) = rest.split_once('(').unwrap_or((rest, ""));
        let (name, consts) = match name_consts.split_once('<') {
            Some((n, c)) => (n, c.strip_suffix('>').unwrap_or(c)),
            None => (name_consts, ""),
        };
        self.b = Builder::new(name);
        for c in split_top(consts) {
            let (n, v) = c.split_once(" = ").ok_or_else(|| self.e("bad constant"))?;
            let v = parse_const(v).ok_or_else(|| self.e(format!("bad constant value `{v}`")))?;
            self.b.add_const(n, v);
        }
        for p in split_top(params) {
            let (n, t) = p.split_once(": ").ok_or_else(|| self.e("bad parameter"))?;
            let n = n
                .strip_prefix('%')
                .ok_or_else(|| self.e("parameter names start with %"))?;
            let kind = if let Some(d) = t.strip_prefix("*mut ") {
                ParamKind::Ptr {
                    pointee: self.dtype(d)?,
                    mutable: true,
                }
            } else if let Some(d) = t.strip_prefix('*') {
                ParamKind::Ptr {
                    pointee: self.dtype(d)?,
                    mutable: false,
                }
            } else {
                ParamKind::Scalar(self.dtype(t)?)
            };
            let v = self.b.add_param(n, kind);
            self.names.insert(format!("%{n}"), v);
        }
        let end = self.insts()?;
        if end != "}" {
            return self.err("expected `}` closing the kernel");
        }
        let b = std::mem::replace(&mut self.b, Builder::new(""));
        Ok(b.finish())
    }

    fn e(&self, message: impl Into<String>) -> IrParseError {
        IrParseError {
            line: self
                .lines
                .get(self.pos.saturating_sub(1))
                .map_or(0, |l| l.0),
            message: message.into(),
        }
    }

    fn dtype(&self, s: &str) -> PResult<DType> {
        DType::from_name(s).ok_or_else(|| self.e(format!("unknown type `{s}`")))
    }

    fn ty(&self, s: &str) -> PResult<Type> {
        let s = s.trim();
        let (shape, elem) = match s.strip_prefix('<').and_then(|r| r.strip_suffix('>')) {
            Some(inner) => {
                let parts: Vec<&str> = inner.split('x').collect();
                let (elem, dims) = parts.split_last().ok_or_else(|| self.e("empty type"))?;
                let dims = dims
                    .iter()
                    .map(|d| {
                        d.parse::<u32>()
                            .map_err(|_| self.e(format!("bad dimension `{d}`")))
                    })
                    .collect::<PResult<Vec<u32>>>()?;
                (dims, *elem)
            }
            None => (vec![], s),
        };
        let elem = match elem.strip_prefix('*') {
            Some(d) => Elem::Ptr(self.dtype(d)?),
            None => Elem::Scalar(self.dtype(elem)?),
        };
        Ok(Type { elem, shape })
    }

    fn val(&self, s: &str) -> PResult<Value> {
        self.names
            .get(s.trim())
            .copied()
            .ok_or_else(|| self.e(format!("unknown value `{}`", s.trim())))
    }

    fn define(&mut self, name: &str, ty: Type) -> Value {
        let v = self.b.new_value(ty);
        self.names.insert(name.trim().to_string(), v);
        v
    }

    /// Parses instructions into the builder's open block until a closing line, which it returns.
    fn insts(&mut self) -> PResult<&'a str> {
        loop {
            let line = self.next_line()?;
            if line.starts_with('}') {
                return Ok(line);
            }
            self.inst(line)?;
        }
    }

    fn inst(&mut self, line: &'a str) -> PResult<()> {
        let (results, rest) = match line.split_once(" = ") {
            Some((r, rest)) if (r.starts_with('%') && !r.contains(' ')) || r.contains(", %") => {
                (split_top(r), rest)
            }
            _ => (vec![], line),
        };
        let (word, args) = rest.split_once(' ').unwrap_or((rest, ""));
        if word == "for" {
            return self.for_loop(&results, args);
        }
        if word == "if" {
            return self.if_op(&results, args);
        }
        let (args, tys) = match args.rsplit_once(" : ") {
            Some((a, t)) if !results.is_empty() => (a, split_top(t)),
            _ => (args, vec![]),
        };
        let ops = split_top(args);
        let v = |i: usize| -> PResult<Value> {
            ops.get(i)
                .ok_or_else(|| self.e(format!("`{word}` lacks operand {i}")))
                .and_then(|s| self.val(s))
        };
        let named = |key: &str| -> PResult<Option<Value>> {
            ops.iter()
                .find_map(|o| o.strip_prefix(key).map(str::trim))
                .map(|o| self.val(o))
                .transpose()
        };
        let num = |s: Option<&&str>| -> PResult<u32> {
            s.and_then(|s| s.trim_start_matches("axis ").parse().ok())
                .ok_or_else(|| self.e(format!("`{word}` needs a number")))
        };
        let first_word = |s: &str| -> (String, String) {
            let (a, b) = s.split_once(' ').unwrap_or((s, ""));
            (a.to_string(), b.to_string())
        };
        let op = match word {
            "const" => Op::Const(
                parse_const(args).ok_or_else(|| self.e(format!("bad constant `{args}`")))?,
            ),
            "program_id" => Op::ProgramId(num(ops.first())? as u8),
            "num_programs" => Op::NumPrograms(num(ops.first())? as u8),
            "range" => Op::Range(num(ops.first())?),
            "splat" => Op::Splat(v(0)?),
            "broadcast" => Op::Broadcast(v(0)?),
            "reshape" => Op::Reshape(v(0)?),
            "trans" => Op::Trans(v(0)?),
            "cast" => Op::Cast(v(0)?),
            "select" => Op::Select(v(0)?, v(1)?, v(2)?),
            "fma" => Op::Fma(v(0)?, v(1)?, v(2)?),
            "ptr_add" => Op::PtrAdd(v(0)?, v(1)?),
            "dot" => Op::Dot {
                a: v(0)?,
                b: v(1)?,
                acc: v(2)?,
            },
            "cmp" => {
                let (pred, first) = first_word(ops.first().copied().unwrap_or(""));
                let pred = match pred.as_str() {
                    "eq" => CmpPred::Eq,
                    "ne" => CmpPred::Ne,
                    "lt" => CmpPred::Lt,
                    "le" => CmpPred::Le,
                    "gt" => CmpPred::Gt,
                    "ge" => CmpPred::Ge,
                    p => return self.err(format!("unknown comparison `{p}`")),
                };
                Op::Cmp(pred, self.val(&first)?, v(1)?)
            }
            "reduce" => {
                let (kind, first) = first_word(ops.first().copied().unwrap_or(""));
                let op = match kind.as_str() {
                    "sum" => ReduceOp::Sum,
                    "max" => ReduceOp::Max,
                    "min" => ReduceOp::Min,
                    "argmax" => ReduceOp::Argmax,
                    k => return self.err(format!("unknown reduction `{k}`")),
                };
                Op::Reduce {
                    op,
                    value: self.val(&first)?,
                    axis: num(ops.get(1))?,
                }
            }
            "load" => Op::Load {
                ptr: v(0)?,
                mask: named("mask ")?,
                other: named("other ")?,
            },
            "store" => Op::Store {
                ptr: v(0)?,
                value: v(1)?,
                mask: named("mask ")?,
            },
            "atomic_add" => Op::AtomicAdd {
                ptr: v(0)?,
                value: v(1)?,
                mask: named("mask ")?,
            },
            "yield" => Op::Yield(ops.iter().map(|o| self.val(o)).collect::<PResult<_>>()?),
            w => {
                if let Some(u) = unary_from(w) {
                    Op::Unary(u, v(0)?)
                } else if let Some(b) = binary_from(w) {
                    Op::Binary(b, v(0)?, v(1)?)
                } else {
                    return self.err(format!("unknown op `{w}`"));
                }
            }
        };
        if tys.len() != results.len() {
            return self.err("each result needs a type");
        }
        let mut rs = vec![];
        for (r, t) in results.iter().zip(&tys) {
            let ty = self.ty(t)?;
            rs.push(self.define(r, ty));
        }
        self.b.push_with_results(op, rs);
        Ok(())
    }

    /// `%r.. = for %iv = %lo to %hi step %s [carry(%a = %init, ..)] {` ... `} [: types]`
    fn for_loop(&mut self, results: &[&str], header: &str) -> PResult<()> {
        let header = header
            .strip_suffix(" {")
            .ok_or_else(|| self.e("`for` line ends with `{`"))?;
        let (bounds, carry) = match header.split_once(" carry(") {
            Some((b, c)) => (b, c.strip_suffix(')').unwrap_or(c)),
            None => (header, ""),
        };
        let words: Vec<&str> = bounds.split_whitespace().collect();
        let [iv, "=", lo, "to", hi, "step", step] = words[..] else {
            return self.err("expected `for %iv = %lo to %hi step %s`");
        };
        let (lo, hi, step) = (self.val(lo)?, self.val(hi)?, self.val(step)?);
        let iv = self.define(iv, self.b.ty(lo).clone());
        let mut args = vec![iv];
        let mut init = vec![];
        for c in split_top(carry) {
            let (a, i) = c.split_once(" = ").ok_or_else(|| self.e("bad carry"))?;
            let i = self.val(i)?;
            init.push(i);
            args.push(self.define(a, self.b.ty(i).clone()));
        }
        self.b.begin_block(args);
        let end = self.insts()?;
        let body = self.b.end_block();
        let tys = end.strip_prefix("} : ").map(split_top).unwrap_or_default();
        let rs = self.results(results, &tys)?;
        self.b.push_with_results(
            Op::For {
                lo,
                hi,
                step,
                init,
                body,
            },
            rs,
        );
        Ok(())
    }

    fn if_op(&mut self, results: &[&str], header: &str) -> PResult<()> {
        let cond = header
            .strip_suffix(" {")
            .ok_or_else(|| self.e("`if` line ends with `{`"))?;
        let cond = self.val(cond)?;
        self.b.begin_block(vec![]);
        let mid = self.insts()?;
        let then_block = self.b.end_block();
        if mid != "} else {" {
            return self.err("expected `} else {`");
        }
        self.b.begin_block(vec![]);
        let end = self.insts()?;
        let else_block = self.b.end_block();
        let tys = end.strip_prefix("} : ").map(split_top).unwrap_or_default();
        let rs = self.results(results, &tys)?;
        self.b.push_with_results(
            Op::If {
                cond,
                then_block,
                else_block,
            },
            rs,
        );
        Ok(())
    }

    fn results(&mut self, names: &[&str], tys: &[&str]) -> PResult<Vec<Value>> {
        if names.len() != tys.len() {
            return self.err("each result needs a type");
        }
        names
            .iter()
            .zip(tys)
            .map(|(n, t)| {
                let ty = self.ty(t)?;
                Ok(self.define(n, ty))
            })
            .collect()
    }
}

/// Splits at commas that are not inside `<>` or `()`.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = vec![];
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '<' | '(' => depth += 1,
            '>' | ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = s[start..].trim();
    if !last.is_empty() {
        out.push(last);
    }
    out
}

fn parse_const(s: &str) -> Option<ConstValue> {
    match s.trim() {
        "true" => Some(ConstValue::Bool(true)),
        "false" => Some(ConstValue::Bool(false)),
        t if DType::from_name(t).is_some() => DType::from_name(t).map(ConstValue::DType),
        t if t.contains(['.', 'e', 'n', 'i', 'N']) => t.parse().ok().map(ConstValue::Float),
        t => t.parse().ok().map(ConstValue::Int),
    }
}

fn unary_from(w: &str) -> Option<UnaryOp> {
    use UnaryOp::*;
    [
        Neg, Not, Abs, Exp, Exp2, Log, Log2, Sqrt, Rsqrt, Sigmoid, Tanh, Sin, Cos,
    ]
    .into_iter()
    .find(|u| super::printer::unary_name(*u) == w)
}

fn binary_from(w: &str) -> Option<BinaryOp> {
    use BinaryOp::*;
    [Add, Sub, Mul, Div, Rem, Min, Max, And, Or, Xor, Shl, Shr]
        .into_iter()
        .find(|b| super::printer::binary_name(*b) == w)
}

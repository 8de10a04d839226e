//! The IR's text form. Values are renumbered in definition order, so the text of a kernel does
//! not depend on how it was built; parameters keep their source names.
//!
//! ```text
//! kernel @scale<BLOCK = 256>(%x: *f32, %y: *mut f32, %n: i32) {
//!   %0 = program_id 0 : i32
//!   %1 = range 256 : <256xi32>
//!   ...
//!   store %9, %8, mask %4
//! }
//! ```

use super::{BinaryOp, Block, CmpPred, Inst, Kernel, Op, ParamKind, ReduceOp, UnaryOp, Value};
use std::collections::HashMap;
use std::fmt::Write;

/// Prints a kernel in the IR text form.
pub fn print_kernel(k: &Kernel) -> String {
    let mut p = Printer::new(k, None);
    p.kernel();
    p.out
}

/// What an annotator says about one instruction: comment lines for [`print_kernel_annotated`].
pub type Annotator<'f> = dyn FnMut(&Inst) -> Vec<String> + 'f;

/// Prints a kernel in the IR text form with comments from `annotate` on each instruction: the
/// first line of what it returns ends the instruction's line (`  ; ...`), the others follow on
/// lines of their own; for a `for` or an `if`, all of them come before it. Comments do not
/// change the text's meaning: it still parses as the same kernel.
pub fn print_kernel_annotated(k: &Kernel, annotate: &mut Annotator<'_>) -> String {
    let mut p = Printer::new(k, Some(annotate));
    p.kernel();
    p.out
}

/// The name every value has in the text form of `k` (`%x` for parameter `x`, `%0`, `%1`, ...
/// in definition order).
pub fn value_names(k: &Kernel) -> HashMap<Value, String> {
    let mut p = Printer::new(k, None);
    p.kernel();
    p.names
}

struct Printer<'a, 'f> {
    kernel: &'a Kernel,
    names: HashMap<Value, String>,
    next: usize,
    out: String,
    annotate: Option<&'a mut Annotator<'f>>,
}

impl<'a, 'f> Printer<'a, 'f> {
    fn new(kernel: &'a Kernel, annotate: Option<&'a mut Annotator<'f>>) -> Self {
        Printer {
            kernel,
            names: HashMap::new(),
            next: 0,
            out: String::new(),
            annotate,
        }
    }

    fn kernel(&mut self) {
        let k = self.kernel;
        write!(self.out, "kernel @{}", k.name).unwrap();
        if !k.consts.is_empty() {
            let consts: Vec<String> = k.consts.iter().map(|(n, v)| format!("{n} = {v}")).collect();
            write!(self.out, "<{}>", consts.join(", ")).unwrap();
        }
        self.out.push('(');
        for (i, (param, &v)) in k.params.iter().zip(&k.body.args).enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            self.names.insert(v, format!("%{}", param.name));
            let ty = match param.kind {
                ParamKind::Ptr {
                    pointee,
                    mutable: true,
                } => format!("*mut {pointee}"),
                ParamKind::Ptr {
                    pointee,
                    mutable: false,
                } => format!("*{pointee}"),
                ParamKind::Scalar(d) => d.to_string(),
            };
            write!(self.out, "%{}: {ty}", param.name).unwrap();
        }
        self.out.push_str(") {\n");
        self.block_body(&k.body, 1);
        self.out.push_str("}\n");
    }

    fn define(&mut self, v: Value) -> String {
        let name = format!("%{}", self.next);
        self.next += 1;
        self.names.insert(v, name.clone());
        name
    }

    fn name(&self, v: Value) -> String {
        self.names
            .get(&v)
            .cloned()
            .unwrap_or_else(|| format!("%<undefined v{}>", v.0))
    }

    fn names(&self, vs: &[Value]) -> String {
        vs.iter()
            .map(|&v| self.name(v))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn block_body(&mut self, b: &Block, depth: usize) {
        for inst in &b.insts {
            self.inst(inst, depth);
        }
    }

    fn indent(&mut self, depth: usize) {
        for _ in 0..depth {
            self.out.push_str("  ");
        }
    }

    fn comment(&mut self, line: &str, depth: usize) {
        self.indent(depth);
        writeln!(self.out, "; {line}").unwrap();
    }

    fn inst(&mut self, inst: &Inst, depth: usize) {
        let notes = match &mut self.annotate {
            Some(f) => f(inst),
            None => vec![],
        };
        let nested = !inst.op.blocks().is_empty();
        if nested {
            for n in &notes {
                self.comment(n, depth);
            }
        }
        self.indent(depth);
        // Results are numbered before the nested blocks of a `for` or `if`, so numbers follow
        // the text from top to bottom.
        let results: Vec<String> = inst.results.iter().map(|&r| self.define(r)).collect();
        let body = self.op_text(&inst.op, depth);
        if !results.is_empty() {
            write!(self.out, "{} = ", results.join(", ")).unwrap();
        }
        self.out.push_str(&body);
        if !inst.results.is_empty() {
            let tys: Vec<String> = inst
                .results
                .iter()
                .map(|&r| self.kernel.ty(r).to_string())
                .collect();
            write!(self.out, " : {}", tys.join(", ")).unwrap();
        }
        if nested {
            self.out.push('\n');
            return;
        }
        if let Some(first) = notes.first() {
            write!(self.out, "  ; {first}").unwrap();
        }
        self.out.push('\n');
        for n in notes.iter().skip(1) {
            self.comment(n, depth);
        }
    }

    fn op_text(&mut self, op: &Op, depth: usize) -> String {
        let n = |p: &Self, v: &Value| p.name(*v);
        match op {
            Op::Const(c) => format!("const {c}"),
            Op::ProgramId(a) => format!("program_id {a}"),
            Op::NumPrograms(a) => format!("num_programs {a}"),
            Op::Range(len) => format!("range {len}"),
            Op::Splat(v) => format!("splat {}", n(self, v)),
            Op::Broadcast(v) => format!("broadcast {}", n(self, v)),
            Op::Reshape(v) => format!("reshape {}", n(self, v)),
            Op::Trans(v) => format!("trans {}", n(self, v)),
            Op::Unary(u, v) => format!("{} {}", unary_name(*u), n(self, v)),
            Op::Binary(b, x, y) => format!("{} {}, {}", binary_name(*b), n(self, x), n(self, y)),
            Op::Cmp(c, x, y) => format!("cmp {} {}, {}", cmp_name(*c), n(self, x), n(self, y)),
            Op::Select(c, x, y) => {
                format!("select {}, {}, {}", n(self, c), n(self, x), n(self, y))
            }
            Op::Fma(a, b, c) => format!("fma {}, {}, {}", n(self, a), n(self, b), n(self, c)),
            Op::Cast(v) => format!("cast {}", n(self, v)),
            Op::PtrAdd(p, o) => format!("ptr_add {}, {}", n(self, p), n(self, o)),
            Op::Load { ptr, mask, other } => {
                let mut s = format!("load {}", n(self, ptr));
                if let Some(m) = mask {
                    write!(s, ", mask {}", n(self, m)).unwrap();
                }
                if let Some(o) = other {
                    write!(s, ", other {}", n(self, o)).unwrap();
                }
                s
            }
            Op::Store { ptr, value, mask } | Op::AtomicAdd { ptr, value, mask } => {
                let word = if matches!(op, Op::Store { .. }) {
                    "store"
                } else {
                    "atomic_add"
                };
                let mut s = format!("{word} {}, {}", n(self, ptr), n(self, value));
                if let Some(m) = mask {
                    write!(s, ", mask {}", n(self, m)).unwrap();
                }
                s
            }
            Op::Reduce { op, value, axis } => {
                format!(
                    "reduce {} {}, axis {axis}",
                    reduce_name(*op),
                    n(self, value)
                )
            }
            Op::Dot { a, b, acc } => {
                format!("dot {}, {}, {}", n(self, a), n(self, b), n(self, acc))
            }
            Op::Yield(vs) => format!("yield {}", self.names(vs)).trim_end().to_string(),
            Op::For {
                lo,
                hi,
                step,
                init,
                body,
            } => {
                let iv = self.define(body.args[0]);
                let mut s = format!(
                    "for {iv} = {} to {} step {}",
                    n(self, lo),
                    n(self, hi),
                    n(self, step)
                );
                if !init.is_empty() {
                    let carried: Vec<String> = body.args[1..]
                        .iter()
                        .zip(init)
                        .map(|(&a, &i)| {
                            let init = self.name(i);
                            format!("{} = {init}", self.define(a))
                        })
                        .collect();
                    write!(s, " carry({})", carried.join(", ")).unwrap();
                }
                s.push_str(" {\n");
                s.push_str(&self.nested(body, depth + 1));
                self.push_indent(&mut s, depth);
                s.push('}');
                s
            }
            Op::If {
                cond,
                then_block,
                else_block,
            } => {
                let mut s = format!("if {} {{\n", n(self, cond));
                s.push_str(&self.nested(then_block, depth + 1));
                self.push_indent(&mut s, depth);
                s.push_str("} else {\n");
                s.push_str(&self.nested(else_block, depth + 1));
                self.push_indent(&mut s, depth);
                s.push('}');
                s
            }
        }
    }

    fn push_indent(&self, s: &mut String, depth: usize) {
        for _ in 0..depth {
            s.push_str("  ");
        }
    }

    fn nested(&mut self, b: &Block, depth: usize) -> String {
        let saved = std::mem::take(&mut self.out);
        self.block_body(b, depth);
        std::mem::replace(&mut self.out, saved)
    }
}

pub(crate) fn unary_name(u: UnaryOp) -> &'static str {
    match u {
        UnaryOp::Neg => "neg",
        UnaryOp::Not => "not",
        UnaryOp::Abs => "abs",
        UnaryOp::Exp => "exp",
        UnaryOp::Exp2 => "exp2",
        UnaryOp::Log => "log",
        UnaryOp::Log2 => "log2",
        UnaryOp::Sqrt => "sqrt",
        UnaryOp::Rsqrt => "rsqrt",
        UnaryOp::Sigmoid => "sigmoid",
        UnaryOp::Tanh => "tanh",
        UnaryOp::Sin => "sin",
        UnaryOp::Cos => "cos",
    }
}

pub(crate) fn binary_name(b: BinaryOp) -> &'static str {
    match b {
        BinaryOp::Add => "add",
        BinaryOp::Sub => "sub",
        BinaryOp::Mul => "mul",
        BinaryOp::Div => "div",
        BinaryOp::Rem => "rem",
        BinaryOp::Min => "min",
        BinaryOp::Max => "max",
        BinaryOp::And => "and",
        BinaryOp::Or => "or",
        BinaryOp::Xor => "xor",
        BinaryOp::Shl => "shl",
        BinaryOp::Shr => "shr",
    }
}

pub(crate) fn cmp_name(c: CmpPred) -> &'static str {
    match c {
        CmpPred::Eq => "eq",
        CmpPred::Ne => "ne",
        CmpPred::Lt => "lt",
        CmpPred::Le => "le",
        CmpPred::Gt => "gt",
        CmpPred::Ge => "ge",
    }
}

pub(crate) fn reduce_name(r: ReduceOp) -> &'static str {
    match r {
        ReduceOp::Sum => "sum",
        ReduceOp::Max => "max",
        ReduceOp::Min => "min",
        ReduceOp::Argmax => "argmax",
    }
}

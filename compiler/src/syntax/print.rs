//! The `--emit ast` dump: the syntax tree as indented S-expressions, one statement a line.

use super::ast::*;
use std::fmt::Write;

/// Prints the syntax tree.
pub fn print_module(m: &Module) -> String {
    let mut out = String::new();
    for item in &m.items {
        match item {
            Item::Kernel(k) => {
                write!(out, "(kernel {}", k.name.name).unwrap();
                for c in &k.consts {
                    write!(out, "\n  (const {} {}", c.name.name, ty(&c.ty)).unwrap();
                    if let Some(d) = &c.default {
                        write!(out, " {}", expr(d)).unwrap();
                    }
                    out.push(')');
                }
                for p in &k.params {
                    write!(out, "\n  (param {} {})", p.name.name, ty(&p.ty)).unwrap();
                }
                block(&mut out, &k.body, 1);
                out.push_str(")\n");
            }
            Item::Function(f) => {
                write!(out, "(fn {}", f.name.name).unwrap();
                for p in &f.params {
                    match &p.ty {
                        Some(t) => write!(out, "\n  (param {} {})", p.name.name, ty(t)).unwrap(),
                        None => write!(out, "\n  (param {})", p.name.name).unwrap(),
                    }
                }
                block(&mut out, &f.body, 1);
                out.push_str(")\n");
            }
        }
    }
    out
}

fn ty(t: &TypeExpr) -> String {
    let ptr = |mutable: bool| if mutable { "*mut " } else { "*" };
    match &t.kind {
        TypeExprKind::Scalar(d) => d.to_string(),
        TypeExprKind::Ptr { pointee, mutable } => format!("{}{pointee}", ptr(*mutable)),
        TypeExprKind::Param { name, ptr: None } => name.clone(),
        TypeExprKind::Param {
            name,
            ptr: Some(mutable),
        } => format!("{}{name}", ptr(*mutable)),
        TypeExprKind::Type => "type".into(),
    }
}

fn indent(out: &mut String, depth: usize) {
    out.push('\n');
    for _ in 0..depth {
        out.push_str("  ");
    }
}

fn block(out: &mut String, b: &Block, depth: usize) {
    indent(out, depth);
    out.push_str("(block");
    for s in &b.stmts {
        stmt(out, s, depth + 1);
    }
    if let Some(t) = &b.tail {
        indent(out, depth + 1);
        write!(out, "(tail {})", expr(t)).unwrap();
    }
    out.push(')');
}

fn stmt(out: &mut String, s: &Stmt, depth: usize) {
    indent(out, depth);
    match &s.kind {
        StmtKind::Let {
            name,
            mutable,
            ty: t,
            value,
        } => {
            let m = if *mutable { "let mut" } else { "let" };
            let t = t
                .as_ref()
                .map(|t| format!(" {}", ty(t)))
                .unwrap_or_default();
            write!(out, "({m} {}{t} {})", name.name, expr(value)).unwrap();
        }
        StmtKind::Assign { target, op, value } => {
            let op = op
                .map(|o| format!("{}=", o.symbol()))
                .unwrap_or_else(|| "=".into());
            write!(out, "({op} {} {})", target.name, expr(value)).unwrap();
        }
        StmtKind::For {
            var,
            start,
            end,
            step,
            body,
        } => {
            write!(out, "(for {} {} {}", var.name, expr(start), expr(end)).unwrap();
            if let Some(s) = step {
                write!(out, " (step {})", expr(s)).unwrap();
            }
            block(out, body, depth + 1);
            out.push(')');
        }
        StmtKind::If {
            cond,
            then_block,
            else_block,
        } => {
            write!(out, "(if {}", expr(cond)).unwrap();
            block(out, then_block, depth + 1);
            if let Some(e) = else_block {
                block(out, e, depth + 1);
            }
            out.push(')');
        }
        StmtKind::StaticAssert { cond, message } => {
            write!(out, "(static_assert {}", expr(cond)).unwrap();
            if let Some(m) = message {
                write!(out, " {m:?}").unwrap();
            }
            out.push(')');
        }
        StmtKind::Expr(e) => out.push_str(&expr(e)),
    }
}

/// One expression on one line.
pub fn expr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int(v) => v.to_string(),
        ExprKind::Float(v) => {
            if v.fract() == 0.0 && v.abs() < 1e15 {
                format!("{v:.1}")
            } else {
                format!("{v}")
            }
        }
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Name(n) => n.clone(),
        ExprKind::Unary { op, operand } => {
            let o = if *op == UnOp::Neg { "-" } else { "!" };
            format!("({o} {})", expr(operand))
        }
        ExprKind::Binary { op, lhs, rhs } => {
            format!("({} {} {})", op.symbol(), expr(lhs), expr(rhs))
        }
        ExprKind::Cast { value, ty: t } => format!("(as {} {})", expr(value), ty(t)),
        ExprKind::Call { callee, args } => {
            let mut s = format!("({}", callee.name);
            for a in args {
                match &a.name {
                    Some(n) => write!(s, " {}: {}", n.name, expr(&a.value)).unwrap(),
                    None => write!(s, " {}", expr(&a.value)).unwrap(),
                }
            }
            s.push(')');
            s
        }
        ExprKind::Index { base, items } => {
            let items: Vec<&str> = items
                .iter()
                .map(|i| if *i == IndexItem::Full { ":" } else { "None" })
                .collect();
            format!("(index {} [{}])", expr(base), items.join(", "))
        }
        ExprKind::List(items) => {
            let items: Vec<String> = items.iter().map(expr).collect();
            format!("[{}]", items.join(", "))
        }
    }
}

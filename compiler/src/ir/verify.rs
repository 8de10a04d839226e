//! Structural and type checks on a kernel. The checker only ever builds valid IR, so a failure
//! here is a compiler bug; passes and backends run it in tests.

use super::{Block, Elem, Kernel, Op, Type, Value};
use crate::types::DType;
use std::collections::HashSet;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid IR in kernel `{kernel}`: {message}")]
pub struct VerifyError {
    pub kernel: String,
    pub message: String,
}

/// Checks that every value is defined once before use and in scope, that each op's operand and
/// result types agree, and that nested blocks end in a `yield` of the right types.
pub fn verify(k: &Kernel) -> Result<(), VerifyError> {
    let mut v = Verifier {
        k,
        defined: HashSet::new(),
        visible: HashSet::new(),
        scopes: vec![],
    };
    v.block(&k.body, None).map_err(|message| VerifyError {
        kernel: k.name.clone(),
        message,
    })
}

struct Verifier<'a> {
    k: &'a Kernel,
    defined: HashSet<Value>,
    /// Values defined in the open blocks: what an instruction may use.
    visible: HashSet<Value>,
    /// The values each open block defined, innermost last (removed from `visible` at its end).
    scopes: Vec<Vec<Value>>,
}

type Check = Result<(), String>;

impl Verifier<'_> {
    fn ty(&self, v: Value) -> Result<&Type, String> {
        self.k
            .values
            .get(v.index())
            .ok_or_else(|| format!("value v{} has no type", v.0))
    }

    fn def(&mut self, v: Value) -> Check {
        self.ty(v)?;
        if !self.defined.insert(v) {
            return Err(format!("value v{} defined twice", v.0));
        }
        self.scopes.last_mut().unwrap().push(v);
        self.visible.insert(v);
        Ok(())
    }

    fn use_(&self, v: Value) -> Check {
        if self.visible.contains(&v) {
            Ok(())
        } else {
            Err(format!("value v{} used where it is not defined", v.0))
        }
    }

    /// `yields`: the types the block must yield, or None for the kernel body.
    fn block(&mut self, b: &Block, yields: Option<&[Type]>) -> Check {
        self.scopes.push(vec![]);
        for &a in &b.args {
            self.def(a)?;
        }
        for (i, inst) in b.insts.iter().enumerate() {
            for v in inst.op.operands() {
                self.use_(v)?;
            }
            if let Op::Yield(vs) = &inst.op {
                let Some(expected) = yields else {
                    return Err("yield at the kernel's top level".into());
                };
                if i + 1 != b.insts.len() {
                    return Err("yield is not the last instruction of its block".into());
                }
                let got: Vec<Type> = vs.iter().map(|&v| self.k.ty(v).clone()).collect();
                if got != expected {
                    return Err(format!("yield of {got:?} where {expected:?} is expected"));
                }
            }
            self.op(&inst.op, &inst.results)?;
            for &r in &inst.results {
                self.def(r)?;
            }
        }
        if yields.is_some() && !matches!(b.insts.last().map(|i| &i.op), Some(Op::Yield(_))) {
            return Err("nested block does not end with yield".into());
        }
        for v in self.scopes.pop().unwrap_or_default() {
            self.visible.remove(&v);
        }
        Ok(())
    }

    fn op(&mut self, op: &Op, results: &[Value]) -> Check {
        let rty = |i: usize| -> Result<Type, String> {
            let r = results
                .get(i)
                .ok_or_else(|| format!("{op:?} lacks result {i}"))?;
            self.ty(*r).cloned()
        };
        let t = |v: &Value| self.k.ty(*v).clone();
        let same_shape = |a: &Type, b: &Type| -> Check {
            if a.shape == b.shape {
                Ok(())
            } else {
                Err(format!("shapes differ: {a} vs {b} in {op:?}"))
            }
        };
        match op {
            Op::Const(_) | Op::Range(_) | Op::ProgramId(_) | Op::NumPrograms(_) => {
                rty(0)?;
            }
            Op::Splat(v) => {
                if !t(v).is_scalar() {
                    return Err(format!("splat of a non-scalar {}", t(v)));
                }
                if rty(0)?.elem != t(v).elem {
                    return Err("splat changes the element type".into());
                }
            }
            Op::Broadcast(v) => {
                let (src, dst) = (t(v), rty(0)?);
                if src.shape.len() != dst.shape.len()
                    || src
                        .shape
                        .iter()
                        .zip(&dst.shape)
                        .any(|(&s, &d)| s != d && s != 1)
                {
                    return Err(format!("cannot broadcast {src} to {dst}"));
                }
            }
            Op::Reshape(v) => {
                if t(v).numel() != rty(0)?.numel() {
                    return Err("reshape changes the element count".into());
                }
            }
            Op::Trans(v) => {
                let (src, dst) = (t(v), rty(0)?);
                if src.shape.len() != 2 || dst.shape != vec![src.shape[1], src.shape[0]] {
                    return Err(format!("bad transpose {src} -> {dst}"));
                }
            }
            Op::Unary(_, v) | Op::Cast(v) => same_shape(&t(v), &rty(0)?)?,
            Op::Binary(_, a, b) => {
                same_shape(&t(a), &t(b))?;
                if t(a).elem != t(b).elem || t(a) != rty(0)? {
                    return Err(format!("binary op types {} {} -> {}", t(a), t(b), rty(0)?));
                }
            }
            Op::Cmp(_, a, b) => {
                same_shape(&t(a), &t(b))?;
                if t(a).elem != t(b).elem || rty(0)?.elem != Elem::Scalar(DType::Bool) {
                    return Err("cmp operand types differ".into());
                }
            }
            Op::Select(c, a, b) => {
                same_shape(&t(c), &t(a))?;
                same_shape(&t(a), &t(b))?;
                if t(a) != t(b) {
                    return Err("select arms differ".into());
                }
            }
            Op::Fma(a, b, c) => {
                if t(a) != t(b) || t(b) != t(c) {
                    return Err("fma operand types differ".into());
                }
            }
            Op::PtrAdd(p, o) => {
                same_shape(&t(p), &t(o))?;
                if !matches!(t(p).elem, Elem::Ptr(_)) {
                    return Err("ptr_add on a non-pointer".into());
                }
            }
            Op::Load { ptr, mask, other } => {
                let p = t(ptr);
                let Elem::Ptr(d) = p.elem else {
                    return Err("load from a non-pointer".into());
                };
                if rty(0)? != p.with_dtype(d) {
                    return Err("load result type".into());
                }
                for m in mask.iter().chain(other) {
                    same_shape(&p, &t(m))?;
                }
            }
            Op::Store { ptr, value, mask } | Op::AtomicAdd { ptr, value, mask } => {
                let p = t(ptr);
                let Elem::Ptr(d) = p.elem else {
                    return Err("store to a non-pointer".into());
                };
                if t(value) != p.with_dtype(d) {
                    return Err(format!("store of {} through {}", t(value), p));
                }
                if let Some(m) = mask {
                    same_shape(&p, &t(m))?;
                }
            }
            Op::Reduce { value, axis, .. } => {
                let src = t(value);
                if *axis as usize >= src.shape.len() {
                    return Err("reduce axis out of range".into());
                }
                let mut shape = src.shape.clone();
                shape.remove(*axis as usize);
                if rty(0)?.shape != shape {
                    return Err("reduce result shape".into());
                }
            }
            Op::Dot { a, b, acc } => {
                let (a, b, acc) = (t(a), t(b), t(acc));
                if a.shape.len() != 2
                    || b.shape.len() != 2
                    || a.shape[1] != b.shape[0]
                    || acc.shape != vec![a.shape[0], b.shape[1]]
                    || rty(0)? != acc
                {
                    return Err(format!("dot shapes {a} x {b} + {acc}"));
                }
            }
            Op::For {
                lo,
                hi,
                step,
                init,
                body,
            } => {
                let ivt = t(lo);
                if t(hi) != ivt || t(step) != ivt || !ivt.is_scalar() {
                    return Err("for bounds must be scalars of one integer type".into());
                }
                if body.args.len() != init.len() + 1 || results.len() != init.len() {
                    return Err("for carries do not match".into());
                }
                let carried: Vec<Type> = init.iter().map(t).collect();
                for (i, &a) in body.args.iter().enumerate() {
                    let want = if i == 0 {
                        ivt.clone()
                    } else {
                        carried[i - 1].clone()
                    };
                    if self.ty(a)? != &want {
                        return Err("for block argument type".into());
                    }
                }
                for (i, &r) in results.iter().enumerate() {
                    if self.ty(r)? != &carried[i] {
                        return Err("for result type".into());
                    }
                }
                self.block(body, Some(&carried))?;
            }
            Op::If {
                cond,
                then_block,
                else_block,
            } => {
                if t(cond) != Type::scalar(DType::Bool) {
                    return Err("if condition must be a bool scalar".into());
                }
                let tys: Vec<Type> = results
                    .iter()
                    .map(|&r| self.ty(r).cloned())
                    .collect::<Result<_, _>>()?;
                self.block(then_block, Some(&tys))?;
                self.block(else_block, Some(&tys))?;
            }
            Op::Yield(_) => {}
        }
        Ok(())
    }
}

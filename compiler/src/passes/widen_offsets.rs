//! Pointer offsets are computed in i64.
//!
//! `x + row * n + cols` with `row`, `n` and `cols` all `i32` would overflow once `row * n` passes
//! 2^31 (a 16,384 x 151,936 logits matrix does). For every `ptr_add` whose offset is `i32`, this
//! pass rebuilds the offset's arithmetic (`add sub mul neg`, shape ops, constants) in `i64`,
//! sign-extending the leaves, so no intermediate product is computed in 32 bits. Values used
//! elsewhere keep their `i32` definition; the widened copy is placed right after the original.

use crate::ir::BinaryOp;
use crate::ir::{Block, ConstValue, DefUse, Elem, Inst, Kernel, Op, Type, UnaryOp, Value};
use crate::types::DType;
use std::collections::HashMap;

/// Rewrites every `ptr_add` with an `i32` offset to use an `i64` offset.
pub fn widen_offsets(k: &mut Kernel) {
    let du = DefUse::new(&k.body);
    let offsets: Vec<Value> = du
        .insts()
        .filter_map(|(_, inst)| match inst.op {
            Op::PtrAdd(_, off) => Some(off),
            _ => None,
        })
        .collect();
    let mut w = Widener {
        du: &du,
        values: &mut k.values,
        widened: HashMap::new(),
        insert_after: HashMap::new(),
    };
    for off in offsets {
        if w.values[off.index()].elem == Elem::Scalar(DType::I32) {
            w.widen(off);
        }
    }
    let (widened, mut insert_after) = (w.widened, w.insert_after);
    rebuild(&mut k.body, &widened, &mut insert_after);
}

struct Widener<'a, 'k> {
    du: &'a DefUse<'k>,
    values: &'a mut Vec<Type>,
    /// i32 value -> its i64 twin.
    widened: HashMap<Value, Value>,
    /// New instructions to place right after the definition of a value.
    insert_after: HashMap<Value, Vec<Inst>>,
}

impl Widener<'_, '_> {
    /// The op defining `v` if it may be rebuilt: single-result ops only; block arguments,
    /// loops and ifs are opaque leaves.
    fn leaf(&self, v: Value) -> Option<Op> {
        match self.du.def(v)? {
            Inst {
                op: Op::For { .. } | Op::If { .. },
                ..
            } => None,
            Inst { results, op } if results.len() == 1 => Some(op.clone()),
            _ => None,
        }
    }

    fn widen(&mut self, v: Value) -> Value {
        if let Some(&w) = self.widened.get(&v) {
            return w;
        }
        let ty = self.values[v.index()].with_dtype(DType::I64);
        let op = match self.leaf(v) {
            Some(Op::Binary(op @ (BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul), a, b)) => {
                Op::Binary(op, self.widen(a), self.widen(b))
            }
            Some(Op::Unary(UnaryOp::Neg, a)) => Op::Unary(UnaryOp::Neg, self.widen(a)),
            Some(Op::Splat(a)) => Op::Splat(self.widen(a)),
            Some(Op::Broadcast(a)) => Op::Broadcast(self.widen(a)),
            Some(Op::Reshape(a)) => Op::Reshape(self.widen(a)),
            Some(Op::Const(ConstValue::Int(c))) => Op::Const(ConstValue::Int(c)),
            _ => Op::Cast(v),
        };
        self.values.push(ty);
        let w = Value(self.values.len() as u32 - 1);
        self.insert_after.entry(v).or_default().push(Inst {
            results: vec![w],
            op,
        });
        self.widened.insert(v, w);
        w
    }
}

fn rebuild(
    b: &mut Block,
    widened: &HashMap<Value, Value>,
    insert_after: &mut HashMap<Value, Vec<Inst>>,
) {
    let mut out = vec![];
    for a in b.args.clone() {
        out.extend(insert_after.remove(&a).unwrap_or_default());
    }
    for mut inst in std::mem::take(&mut b.insts) {
        if let Op::PtrAdd(_, off) = &mut inst.op {
            if let Some(&w) = widened.get(off) {
                *off = w;
            }
        }
        for nested in inst.op.blocks_mut() {
            rebuild(nested, widened, insert_after);
        }
        let results = inst.results.clone();
        out.push(inst);
        for r in results {
            out.extend(insert_after.remove(&r).unwrap_or_default());
        }
    }
    b.insts = out;
}

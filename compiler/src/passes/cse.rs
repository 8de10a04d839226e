//! Common subexpression elimination over pure ops, with light constant folding of shape ops
//! (a splat, broadcast, reshape or cast of a constant is a constant).

use crate::ir::{Block, ConstValue, Kernel, Op, Type, Value};
use std::collections::HashMap;

/// Replaces each pure instruction that repeats an earlier one in scope by the earlier result.
pub fn cse(k: &mut Kernel) {
    let mut body = std::mem::take(&mut k.body);
    let mut cx = Cse {
        values: &k.values,
        scopes: vec![],
        replace: HashMap::new(),
        consts: HashMap::new(),
    };
    cx.block(&mut body);
    k.body = body;
}

struct Cse<'a> {
    values: &'a [Type],
    scopes: Vec<HashMap<String, Value>>,
    replace: HashMap<Value, Value>,
    consts: HashMap<Value, ConstValue>,
}

impl Cse<'_> {
    fn block(&mut self, b: &mut Block) {
        self.scopes.push(HashMap::new());
        let insts = std::mem::take(&mut b.insts);
        for mut inst in insts {
            for v in inst.op.operands_mut() {
                if let Some(r) = self.replace.get(v) {
                    *v = *r;
                }
            }
            for nested in inst.op.blocks_mut() {
                self.block(nested);
            }
            if let [result] = inst.results[..] {
                self.fold_constant(&mut inst.op);
                if let Some(key) = self.key(&inst.op, result) {
                    if let Some(&earlier) = self.scopes.iter().rev().find_map(|s| s.get(&key)) {
                        self.replace.insert(result, earlier);
                        continue;
                    }
                    self.scopes.last_mut().unwrap().insert(key, result);
                }
                if let Op::Const(c) = inst.op {
                    self.consts.insert(result, c);
                }
            }
            b.insts.push(inst);
        }
        self.scopes.pop();
    }

    /// Shape ops of a constant become the constant at the new shape.
    fn fold_constant(&self, op: &mut Op) {
        if let Op::Splat(v) | Op::Broadcast(v) | Op::Reshape(v) = op {
            if let Some(&c) = self.consts.get(v) {
                *op = Op::Const(c);
            }
        }
    }

    /// A key identifying a pure op and its result type; `None` for ops that must not merge.
    fn key(&self, op: &Op, result: Value) -> Option<String> {
        match op {
            Op::Load { .. }
            | Op::Store { .. }
            | Op::AtomicAdd { .. }
            | Op::For { .. }
            | Op::If { .. }
            | Op::Yield(_) => None,
            _ => Some(format!("{op:?}|{}", self.values[result.index()])),
        }
    }
}

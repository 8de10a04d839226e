//! Dead code elimination: drops instructions without side effects whose results are unused.

use crate::ir::{Block, Kernel, Value};
use std::collections::HashSet;

/// Removes dead instructions until none is left.
pub fn dce(k: &mut Kernel) {
    loop {
        let mut used = HashSet::new();
        collect_uses(&k.body, &mut used);
        if !remove_dead(&mut k.body, &used) {
            break;
        }
    }
}

fn collect_uses(b: &Block, used: &mut HashSet<Value>) {
    for inst in &b.insts {
        used.extend(inst.op.operands());
        for nested in inst.op.blocks() {
            collect_uses(nested, used);
        }
    }
}

/// Returns whether anything was removed.
fn remove_dead(b: &mut Block, used: &HashSet<Value>) -> bool {
    let before = b.insts.len();
    b.insts
        .retain(|i| i.op.has_side_effects() || i.results.iter().any(|r| used.contains(r)));
    let mut changed = b.insts.len() != before;
    for inst in &mut b.insts {
        for nested in inst.op.blocks_mut() {
            changed |= remove_dead(nested, used);
        }
    }
    changed
}

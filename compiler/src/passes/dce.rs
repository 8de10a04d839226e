//! Dead code elimination: drops instructions without side effects whose results are unused.

use crate::ir::{Block, DefUse, Kernel, Value};
use std::collections::HashSet;

/// Removes dead instructions until none is left.
pub fn dce(k: &mut Kernel) {
    loop {
        let used: HashSet<Value> = {
            let du = DefUse::new(&k.body);
            du.defined().filter(|&v| du.is_used(v)).collect()
        };
        if !remove_dead(&mut k.body, &used) {
            break;
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

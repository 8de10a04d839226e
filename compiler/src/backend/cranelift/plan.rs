//! Which tiles are *virtual*: computed element by element inside the loop of the op that reads
//! them, instead of being stored to a stack array first. Fusing elementwise chains this way keeps
//! intermediates in registers.
//!
//! - *Cheap* tiles (constants, splats, ranges, and integer/compare/select/shape arithmetic on
//!   cheap tiles, no loads and no calls) are always virtual: recomputing them is as cheap as
//!   reading them back.
//! - `broadcast` and `trans` are virtual index remaps of their operand, which is materialised
//!   unless cheap.
//! - Any other elementwise tile (math, float arithmetic, loads, casts) is virtual when it has one
//!   use, in the same block, by an op that reads it elementwise (a `dot` reads its accumulator
//!   so, straight into the product's destination); a load additionally needs no
//!   memory write between it and the op that finally evaluates its chain.
//!
//! Everything else (results of reductions, `dot`, `for`, `if`, loop arguments) lives in a slot.
//!
//! A virtual tile is recomputed at each of its uses, so a tile whose fully expanded expression
//! would exceed [`MAX_EXPANSION`] operations is stored instead: `let b = a + a;` repeated
//! doubles the expansion at every step, and lowering must stay linear in the program's size.

use crate::ir::{DefUse, Kernel, Op, Site, UnaryOp, UseKind, Value};
use std::collections::{HashMap, HashSet};

/// The fusion decisions for one kernel.
pub(super) struct Plan {
    virtual_: HashSet<Value>,
}

impl Plan {
    pub(super) fn is_virtual(&self, v: Value) -> bool {
        self.virtual_.contains(&v)
    }
}

struct Use {
    at: Site,
    fusing: bool,
    /// The value the using instruction defines, if any.
    result: Option<Value>,
}

/// The most operations one element of a virtual tile may expand to.
const MAX_EXPANSION: u64 = 64;

struct Facts<'a> {
    defs: HashMap<Value, (Site, &'a Op)>,
    /// Defined values in program order (operands before the values that use them).
    order: Vec<Value>,
    uses: HashMap<Value, Vec<Use>>,
    /// Per block, for each instruction: does it write memory?
    effects: Vec<Vec<bool>>,
}

/// True for ops that read their tile operands elementwise at the same index as they produce.
fn reads_elementwise(op: &Op) -> bool {
    op.is_elementwise()
        || matches!(
            op,
            Op::Reshape(_)
                | Op::Load { .. }
                | Op::Store { .. }
                | Op::AtomicAdd { .. }
                | Op::Reduce { .. }
        )
}

impl<'a> Facts<'a> {
    fn new(du: &DefUse<'a>) -> Facts<'a> {
        let mut facts = Facts {
            defs: HashMap::new(),
            order: du.defined().collect(),
            uses: HashMap::new(),
            effects: (0..du.num_blocks() as u32)
                .map(|b| {
                    du.block_at(b)
                        .insts
                        .iter()
                        .map(|i| !matches!(i.op, Op::Yield(_)) && i.op.has_side_effects())
                        .collect()
                })
                .collect(),
        };
        for &v in &facts.order {
            let site = du.def_site(v).expect("a defined value has a site");
            let op = du.def_op(v).expect("a defined value has an op");
            facts.defs.insert(v, (site, op));
            let uses = du
                .uses(v)
                .iter()
                .map(|u| {
                    let op = &u.inst.op;
                    // A dot's accumulator is read elementwise, into the product's destination.
                    let fusing = u.kind == UseKind::Operand
                        && (reads_elementwise(op)
                            || matches!(op, Op::Dot { acc, a, b } if *acc == v && *a != v && *b != v));
                    Use {
                        at: u.site,
                        fusing,
                        result: match u.kind {
                            UseKind::Operand => u.inst.results.first().copied(),
                            UseKind::Flow(_) => None,
                        },
                    }
                })
                .collect();
            facts.uses.insert(v, uses);
        }
        facts
    }
}

/// Decides which values are virtual.
pub(super) fn plan(k: &Kernel, du: &DefUse<'_>) -> Plan {
    let facts = Facts::new(du);
    let is_tile = |v: Value| !k.ty(v).is_scalar();

    let mut cheap: HashSet<Value> = HashSet::new();
    let mut sorted: Vec<Value> = facts.defs.keys().copied().filter(|&v| is_tile(v)).collect();
    sorted.sort();
    // Value numbers need not follow definition order, so iterate to a fixed point.
    loop {
        let before = cheap.len();
        for &v in &sorted {
            if cheap.contains(&v) {
                continue;
            }
            let op = facts.defs[&v].1;
            let ok = match op {
                Op::Const(_) | Op::Range(_) | Op::Splat(_) => true,
                Op::Unary(UnaryOp::Neg | UnaryOp::Not | UnaryOp::Abs, _)
                | Op::Binary(..)
                | Op::Cmp(..)
                | Op::Select(..)
                | Op::Cast(_)
                | Op::PtrAdd(..)
                | Op::Reshape(_)
                | Op::Broadcast(_)
                | Op::Trans(_) => op
                    .operands()
                    .iter()
                    .all(|&o| !is_tile(o) || cheap.contains(&o)),
                _ => false,
            };
            if ok {
                cheap.insert(v);
            }
        }
        if cheap.len() == before {
            break;
        }
    }

    let mut virtual_ = cheap.clone();
    for &v in &sorted {
        let (site, op) = facts.defs[&v];
        if matches!(op, Op::Broadcast(_) | Op::Trans(_)) {
            virtual_.insert(v);
            continue;
        }
        let elementwise =
            reads_elementwise(op) && !matches!(op, Op::Store { .. } | Op::Reduce { .. });
        let uses = facts.uses.get(&v).map(Vec::as_slice).unwrap_or(&[]);
        if elementwise && uses.len() == 1 && uses[0].fusing && uses[0].at.block == site.block {
            virtual_.insert(v);
        }
    }

    // Bound what each virtual tile expands to: operands come first in program order, and a
    // stored operand counts as one read.
    let mut expansion: HashMap<Value, u64> = HashMap::new();
    for &v in &facts.order {
        if !virtual_.contains(&v) {
            continue;
        }
        let size = facts.defs[&v]
            .1
            .operands()
            .iter()
            .map(|o| expansion.get(o).copied().unwrap_or(1))
            .fold(1u64, u64::saturating_add);
        if size > MAX_EXPANSION {
            virtual_.remove(&v);
            cheap.remove(&v);
        } else {
            expansion.insert(v, size);
        }
    }

    // A virtual load is read where its chain is finally evaluated; no write may come between.
    let root = |mut v: Value| -> Site {
        loop {
            let u = &facts.uses[&v][0];
            match u.result {
                Some(r) if virtual_.contains(&r) && !cheap.contains(&r) => v = r,
                _ => return u.at,
            }
        }
    };
    let hazards: Vec<Value> = sorted
        .iter()
        .copied()
        .filter(|&v| virtual_.contains(&v) && !cheap.contains(&v))
        .filter(|v| matches!(facts.defs[v].1, Op::Load { .. }))
        .filter(|&v| {
            let def = facts.defs[&v].0;
            let end = root(v);
            facts.effects[def.block as usize][def.index as usize + 1..end.index as usize]
                .iter()
                .any(|&e| e)
        })
        .collect();
    for v in hazards {
        virtual_.remove(&v);
    }
    Plan { virtual_ }
}

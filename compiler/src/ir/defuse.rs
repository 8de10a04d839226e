//! Definitions and uses: for every value, the instruction that defines it and every place that
//! reads it. Built once per kernel (per pass that needs it, since passes rewrite the IR) and
//! shared by the analyses and lowerers of a backend.
//!
//! Instructions are identified by their [`Site`]: the block they are in (blocks numbered in
//! pre-order, the kernel body first) and their index there. A use is either an operand of an
//! instruction or a *flow*: a `for`'s initial value or a yielded value, which becomes a block
//! argument or an op's result rather than being computed with.

use super::{Block, Inst, Op, Value};
use std::collections::HashMap;

/// Where an instruction is: its block (pre-order number) and its index in the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Site {
    pub block: u32,
    pub index: u32,
}

/// How a use reads its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UseKind {
    /// An operand the instruction computes with (a `for`'s bounds and an `if`'s condition
    /// included).
    Operand,
    /// Becomes this value: a `for`'s initial value or a yielded value flows into the loop's
    /// block argument, an `if` branch's yielded value into the `if`'s result.
    Flow(Value),
}

/// One read of a value.
#[derive(Clone, Copy, Debug)]
pub struct Use<'a> {
    /// The reading instruction: the `for` for an initial value, the `yield` for a yielded one.
    pub inst: &'a Inst,
    pub site: Site,
    pub kind: UseKind,
}

/// The definitions and uses of every value of a block and the blocks nested in it.
pub struct DefUse<'a> {
    defs: HashMap<Value, (Site, &'a Inst)>,
    uses: HashMap<Value, Vec<Use<'a>>>,
    /// Every instruction, nested ones included, in program order (an op before the
    /// instructions of its blocks).
    insts: Vec<(Site, &'a Inst)>,
    /// Per block, its instructions' sites start at index 0; `blocks[b]` is block `b`.
    blocks: Vec<&'a Block>,
}

impl<'a> DefUse<'a> {
    /// The definitions and uses of a kernel body (`&kernel.body`).
    pub fn new(body: &'a Block) -> DefUse<'a> {
        let mut du = DefUse {
            defs: HashMap::new(),
            uses: HashMap::new(),
            insts: vec![],
            blocks: vec![],
        };
        du.block(body);
        du
    }

    fn block(&mut self, b: &'a Block) {
        let id = self.blocks.len() as u32;
        self.blocks.push(b);
        for (i, inst) in b.insts.iter().enumerate() {
            let site = Site {
                block: id,
                index: i as u32,
            };
            self.insts.push((site, inst));
            match &inst.op {
                // Recorded as flows by the op that owns the block.
                Op::Yield(_) => {}
                Op::For {
                    lo,
                    hi,
                    step,
                    init,
                    body,
                } => {
                    for v in [lo, hi, step] {
                        self.add_use(*v, inst, site, UseKind::Operand);
                    }
                    for (v, arg) in init.iter().zip(&body.args[1..]) {
                        self.add_use(*v, inst, site, UseKind::Flow(*arg));
                    }
                }
                Op::If { cond, .. } => self.add_use(*cond, inst, site, UseKind::Operand),
                op => {
                    for v in op.operands() {
                        self.add_use(v, inst, site, UseKind::Operand);
                    }
                }
            }
            for &r in &inst.results {
                self.defs.insert(r, (site, inst));
            }
            match &inst.op {
                Op::For { body, .. } => {
                    let yield_site = self.nested_yield_site(body);
                    self.block(body);
                    self.yields(body, &body.args[1..], yield_site);
                }
                Op::If {
                    then_block,
                    else_block,
                    ..
                } => {
                    for b in [then_block, else_block] {
                        let yield_site = self.nested_yield_site(b);
                        self.block(b);
                        self.yields(b, &inst.results, yield_site);
                    }
                }
                _ => {}
            }
        }
    }

    /// The site the final `yield` of `b` will get once `b` is numbered next.
    fn nested_yield_site(&self, b: &Block) -> Site {
        Site {
            block: self.blocks.len() as u32,
            index: b.insts.len().saturating_sub(1) as u32,
        }
    }

    /// Records the values `b` yields as flows into `to`.
    fn yields(&mut self, b: &'a Block, to: &[Value], site: Site) {
        if let Some(
            inst @ Inst {
                op: Op::Yield(vs), ..
            },
        ) = b.insts.last()
        {
            for (v, t) in vs.iter().zip(to) {
                self.add_use(*v, inst, site, UseKind::Flow(*t));
            }
        }
    }

    fn add_use(&mut self, v: Value, inst: &'a Inst, site: Site, kind: UseKind) {
        self.uses
            .entry(v)
            .or_default()
            .push(Use { inst, site, kind });
    }

    /// The instruction that defines `v`; `None` for block arguments (kernel parameters,
    /// induction variables, carried values).
    pub fn def(&self, v: Value) -> Option<&'a Inst> {
        self.defs.get(&v).map(|&(_, i)| i)
    }

    /// The op that defines `v`, if an instruction does.
    pub fn def_op(&self, v: Value) -> Option<&'a Op> {
        self.def(v).map(|i| &i.op)
    }

    /// Where `v` is defined, if an instruction defines it.
    pub fn def_site(&self, v: Value) -> Option<Site> {
        self.defs.get(&v).map(|&(s, _)| s)
    }

    /// Every use of `v`, in program order.
    pub fn uses(&self, v: Value) -> &[Use<'a>] {
        self.uses.get(&v).map_or(&[], Vec::as_slice)
    }

    /// How many times `v` is read (operands and flows).
    pub fn use_count(&self, v: Value) -> usize {
        self.uses(v).len()
    }

    /// Whether anything reads `v`.
    pub fn is_used(&self, v: Value) -> bool {
        !self.uses(v).is_empty()
    }

    /// Every instruction, nested ones included, in program order, with its site.
    pub fn insts(&self) -> impl Iterator<Item = (Site, &'a Inst)> + '_ {
        self.insts.iter().copied()
    }

    /// Every value defined by an instruction, in program order.
    pub fn defined(&self) -> impl Iterator<Item = Value> + '_ {
        self.insts
            .iter()
            .flat_map(|(_, i)| i.results.iter().copied())
    }

    /// The block numbered `b` (see [`Site`]).
    pub fn block_at(&self, b: u32) -> &'a Block {
        self.blocks[b as usize]
    }

    /// How many blocks there are.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::parse_kernel;

    #[test]
    fn loops_record_initial_and_yielded_values_as_flows() {
        let k = parse_kernel(
            "kernel @k(%n: i32) {
               %0 = const 0 : i32
               %1 = const 1 : i32
               %2 = for %i = %0 to %n step %1 carry(%acc = %0) {
                 %3 = add %acc, %i : i32
                 yield %3
               } : i32
             }
",
        )
        .unwrap();
        let du = DefUse::new(&k.body);
        let body = match &k.body.insts[2].op {
            Op::For { body, .. } => body,
            _ => panic!("not a for"),
        };
        let (acc, sum) = (body.args[1], body.insts[0].results[0]);
        let zero = k.body.insts[0].results[0];
        // `%0` is the start (an operand) and the initial value (a flow into `%acc`).
        let kinds: Vec<UseKind> = du.uses(zero).iter().map(|u| u.kind).collect();
        assert_eq!(kinds, [UseKind::Operand, UseKind::Flow(acc)]);
        let yielded = du.uses(sum);
        assert_eq!(yielded.len(), 1);
        assert_eq!(yielded[0].kind, UseKind::Flow(acc));
        assert_eq!(yielded[0].site, Site { block: 1, index: 1 });
        assert!(matches!(yielded[0].inst.op, Op::Yield(_)));
        assert_eq!(du.def_site(sum), Some(Site { block: 1, index: 0 }));
        assert!(du.def(acc).is_none());
        assert_eq!(du.insts().count(), 5);
    }
}

//! Pointer provenance: which kernel parameters each pointer value may point into.
//!
//! Pointers enter a kernel only as parameters and are changed only by `ptr + offset`, moves of
//! the tile (splat, broadcast, reshape, transpose), `select`, and `for`/`if` results. So every
//! pointer value points into the buffer of one of a known set of parameters; checked launches
//! compare each address against the bounds of those buffers.

use super::{Block, Kernel, Op, ParamKind, Value};

/// A set of parameter indices, one bit each (kernels have at most [`ParamSet::CAPACITY`]
/// pointer parameters for the analysis).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ParamSet(u64);

impl ParamSet {
    /// Parameters past this index cannot be represented.
    pub const CAPACITY: usize = 64;

    /// The set holding parameter `i` alone.
    pub fn single(i: usize) -> ParamSet {
        ParamSet(1 << i)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn union(self, other: ParamSet) -> ParamSet {
        ParamSet(self.0 | other.0)
    }

    /// The parameter indices, in increasing order.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..Self::CAPACITY).filter(move |&i| self.0 >> i & 1 == 1)
    }
}

/// For every value of a kernel, the parameters it may point into (empty for non-pointers).
#[derive(Clone, Debug)]
pub struct Provenance {
    sets: Vec<ParamSet>,
}

impl Provenance {
    /// Runs the analysis. Fails when a pointer parameter's index is past
    /// [`ParamSet::CAPACITY`].
    pub fn of(k: &Kernel) -> Result<Provenance, String> {
        let mut p = Provenance {
            sets: vec![ParamSet::default(); k.values.len()],
        };
        for (i, (param, &v)) in k.params.iter().zip(&k.body.args).enumerate() {
            if let ParamKind::Ptr { .. } = param.kind {
                if i >= ParamSet::CAPACITY {
                    return Err(format!(
                        "pointer parameter `{}` is parameter {i}; checked launches support \
                         pointers among the first {} parameters",
                        param.name,
                        ParamSet::CAPACITY
                    ));
                }
                p.sets[v.index()] = ParamSet::single(i);
            }
        }
        // Loop-carried pointers flow back to the top of their loop: iterate to a fixed point.
        // Sets only grow, and there are at most 64 bits per value.
        while p.block(&k.body) {}
        Ok(p)
    }

    /// The parameters `v` may point into.
    pub fn of_value(&self, v: Value) -> ParamSet {
        self.sets[v.index()]
    }

    /// Adds `from` to `to`'s set; true if that changed it.
    fn flow(&mut self, from: ParamSet, to: Value) -> bool {
        let old = self.sets[to.index()];
        let new = old.union(from);
        self.sets[to.index()] = new;
        new != old
    }

    fn union_of(&self, vs: &[Value]) -> ParamSet {
        vs.iter()
            .fold(ParamSet::default(), |s, &v| s.union(self.of_value(v)))
    }

    /// One pass over `b`; true if any set changed.
    fn block(&mut self, b: &Block) -> bool {
        let mut changed = false;
        for inst in &b.insts {
            let result = inst.results.first().copied();
            match &inst.op {
                Op::Splat(v) | Op::Broadcast(v) | Op::Reshape(v) | Op::Trans(v) => {
                    changed |= self.flow(self.of_value(*v), result.expect("one result"));
                }
                Op::PtrAdd(p, _) => {
                    changed |= self.flow(self.of_value(*p), result.expect("one result"));
                }
                Op::Select(_, a, b) => {
                    let s = self.union_of(&[*a, *b]);
                    changed |= self.flow(s, result.expect("one result"));
                }
                Op::For { init, body, .. } => {
                    // body.args = [iv, carried...]; the last inst yields the next carried values.
                    let yields = yielded(body);
                    for (j, &carried) in body.args.iter().skip(1).enumerate() {
                        let mut s = self.of_value(init[j]);
                        if let Some(y) = yields.get(j) {
                            s = s.union(self.of_value(*y));
                        }
                        changed |= self.flow(s, carried);
                    }
                    changed |= self.block(body);
                    for (j, &r) in inst.results.iter().enumerate() {
                        let s = self.of_value(body.args[j + 1]);
                        let s = yielded(body)
                            .get(j)
                            .map_or(s, |&y| s.union(self.of_value(y)));
                        changed |= self.flow(s, r);
                    }
                }
                Op::If {
                    then_block,
                    else_block,
                    ..
                } => {
                    changed |= self.block(then_block);
                    changed |= self.block(else_block);
                    for (j, &r) in inst.results.iter().enumerate() {
                        let s = [then_block, else_block]
                            .iter()
                            .filter_map(|b| yielded(b).get(j).copied())
                            .fold(ParamSet::default(), |s, y| s.union(self.of_value(y)));
                        changed |= self.flow(s, r);
                    }
                }
                _ => {}
            }
        }
        changed
    }
}

/// The values of a block's closing `yield` (none if it has none).
fn yielded(b: &Block) -> &[Value] {
    match b.insts.last().map(|i| &i.op) {
        Some(Op::Yield(vs)) => vs,
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile_to_ir, Defines, Source};

    fn provenance_of_stores(src: &str) -> Vec<Vec<usize>> {
        let k = compile_to_ir(&Source::new("t.kiln", src), &Defines::new()).unwrap();
        let k = &k[0];
        let p = Provenance::of(k).unwrap();
        let mut out = vec![];
        fn walk(b: &Block, p: &Provenance, out: &mut Vec<Vec<usize>>) {
            for inst in &b.insts {
                if let Op::Store { ptr, .. } = inst.op {
                    out.push(p.of_value(ptr).iter().collect());
                }
                for nested in inst.op.blocks() {
                    walk(nested, p, out);
                }
            }
        }
        walk(&k.body, &p, &mut out);
        out
    }

    #[test]
    fn pointers_keep_the_parameter_they_came_from() {
        let src = "kernel k(n: i32, x: *f32, y: *mut f32, z: *mut f32) {
            let offs = range(16);
            store(y + offs, load(x + offs));
            store(z + offs[:, None] + range(4)[None, :], 1.0);
        }";
        assert_eq!(provenance_of_stores(src), vec![vec![2], vec![3]]);
    }

    #[test]
    fn branch_and_loop_carried_pointers_take_the_union() {
        let src = "kernel k(y: *mut f32, z: *mut f32, c: i32, n: i32) {
            let mut p = y;
            for i in 0..n step 1 {
                p = p + 1;
            }
            store(p + range(4), 1.0);
            let mut q = y;
            if c > 0 {
                q = z;
            }
            store(q + range(4), 1.0);
        }";
        assert_eq!(provenance_of_stores(src), vec![vec![0], vec![0, 1]]);
    }
}

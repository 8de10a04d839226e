//! Broadcasts without shared memory: a tile computed only from `range`, constants, scalars and
//! elementwise ops (index grids, masks, pointer tiles) is recomputed at each destination element
//! rather than moved between threads. LLVM's CSE removes what the recomputation repeats.

use super::layout::dim_shifts;
use super::lower::{Lowerer, Res};
use crate::ir::{DefUse, Kernel, Op, Value};
use inkwell::values::{BasicValue, BasicValueEnum, IntValue};

/// The most ops one rematerialised element may take (the expression counted as a tree).
const BUDGET: usize = 48;

/// True if `v` can be evaluated at any element index within the op budget.
pub fn rematerialisable(k: &Kernel, du: &DefUse<'_>, v: Value) -> bool {
    let mut budget = BUDGET;
    cost(k, du, v, &mut budget)
}

fn cost(k: &Kernel, du: &DefUse<'_>, v: Value, budget: &mut usize) -> bool {
    if *budget == 0 {
        return false;
    }
    *budget -= 1;
    if k.ty(v).numel() == 1 {
        return true;
    }
    let Some(op) = du.def_op(v) else { return false };
    let mut ok = |a: &Value| cost(k, du, *a, budget);
    match op {
        Op::Const(_) | Op::Range(_) | Op::Splat(_) => true,
        Op::Unary(_, a) | Op::Cast(a) | Op::Reshape(a) | Op::Broadcast(a) => ok(a),
        Op::Binary(_, a, b) | Op::Cmp(_, a, b) | Op::PtrAdd(a, b) => ok(a) && ok(b),
        Op::Select(a, b, c) | Op::Fma(a, b, c) => ok(a) && ok(b) && ok(c),
        _ => false,
    }
}

impl<'ctx> Lowerer<'_, 'ctx> {
    /// The element of `v` at flat index `idx` (an i32), recomputed.
    pub fn remat_at(&self, v: Value, idx: IntValue<'ctx>) -> Res<BasicValueEnum<'ctx>> {
        if self.k.ty(v).numel() == 1 {
            return self.scalar(v);
        }
        let op = self
            .def(v)
            .ok_or_else(|| format!("v{} cannot be recomputed", v.0))?;
        let at = |a: &Value| self.remat_at(*a, idx);
        Ok(match op {
            Op::Const(c) => self.constant(*c, self.k.ty(v).elem)?,
            Op::Range(_) => idx.as_basic_value_enum(),
            Op::Splat(s) => self.scalar(*s)?,
            Op::Reshape(a) => at(a)?,
            Op::Broadcast(a) => {
                let (s, d) = (&self.k.ty(*a).shape, &self.k.ty(v).shape);
                self.remat_at(*a, self.broadcast_index(s, d, idx)?)?
            }
            Op::Unary(u, a) => self.unary(*u, at(a)?, self.dtype(*a)?)?,
            Op::Binary(b, x, y) => self.binary(*b, at(x)?, at(y)?, self.dtype(*x)?)?,
            Op::Cmp(p, x, y) => self.compare(*p, at(x)?, at(y)?, self.dtype(*x)?)?,
            Op::Select(c, x, y) => {
                self.b
                    .build_select(at(c)?.into_int_value(), at(x)?, at(y)?, "")?
            }
            Op::Fma(x, y, z) => self.fma(at(x)?, at(y)?, at(z)?, self.dtype(*x)?)?,
            Op::Cast(a) => self.cast(at(a)?, self.dtype(*a)?, self.dtype(v)?)?,
            Op::PtrAdd(p, o) => self.ptr_add(*p, at(p)?, at(o)?)?,
            _ => return Err(format!("v{} cannot be recomputed", v.0).into()),
        })
    }

    /// The source flat index of destination element `idx` when `src` is broadcast to `dst`.
    pub fn broadcast_index(
        &self,
        src: &[u32],
        dst: &[u32],
        idx: IntValue<'ctx>,
    ) -> Res<IntValue<'ctx>> {
        let (ss, ds) = (dim_shifts(src), dim_shifts(dst));
        let mut out = self.i32(0);
        for dim in 0..dst.len() {
            if src[dim] == 1 {
                continue;
            }
            let digit = self.digit(idx, ds[dim], dst[dim])?;
            let placed = self
                .b
                .build_left_shift(digit, self.i32(ss[dim] as u64), "")?;
            out = self.b.build_or(out, placed, "")?;
        }
        Ok(out)
    }
}

//! Four-lane loads and stores through contiguous pointers. A masked access whose four lanes are
//! all enabled is one vector access; otherwise the group falls back to one scalar access per
//! lane, with masked-off lanes redirected to the scratch slot as in `memory`. With bounds
//! checks, a group whose four lanes are not all inside the buffer goes to the scratch slot
//! whole, and the fault is recorded.

use super::lanes::lane_type;
use super::lower::{cl_type, Lowerer, Res};
use super::vector::{lane_cast, Group};
use crate::backend::AccessKind;
use crate::ir::{Elem, Value};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value as ClValue};
use cranelift_codegen::ir::{Block, BlockArg};

/// The blocks a masked group access branches to; each ends by jumping to `join`.
struct MaskSplit {
    /// Every lane is on: one vector access.
    all: Block,
    /// No lane is on.
    none: Block,
    /// Some lanes are on (lane masks only): one scalar access per lane, under the mask.
    some: Option<(Block, ClValue)>,
    join: Block,
}

impl Lowerer<'_, '_> {
    /// Four elements of type `e` at `addr` as lanes.
    pub(super) fn load_lanes(&mut self, addr: ClValue, e: Elem, flags: MemFlagsData) -> ClValue {
        let ty = cl_type(e);
        if ty.bytes() == 4 {
            let lt = lane_type(e).unwrap_or(types::I32X4);
            return self.b.ins().load(lt, flags, addr, 0);
        }
        // 16-bit floats: eight bytes, zero-extended into 32-bit lanes.
        let w = self.b.ins().load(types::I64, flags, addr, 0);
        let v = self.b.ins().scalar_to_vector(types::I64X2, w);
        let v = self.b.ins().bitcast(types::I16X8, lane_cast(), v);
        self.b.ins().uwiden_low(v)
    }

    /// Stores four lanes of element type `e` to `addr`.
    pub(super) fn store_lanes(&mut self, addr: ClValue, x: ClValue, e: Elem, flags: MemFlagsData) {
        if cl_type(e).bytes() == 4 {
            self.b.ins().store(flags, x, addr, 0);
            return;
        }
        // Words hold 16-bit patterns, so the saturating narrow is exact.
        let v = self.b.ins().unarrow(x, x);
        let v = self.b.ins().bitcast(types::I64X2, lane_cast(), v);
        let w = self.b.ins().extractlane(v, 0);
        self.b.ins().store(flags, w, addr, 0);
    }

    /// The group at `i` of `load(ptr, mask, other)`, whose result is `r`.
    pub(super) fn load_group(
        &mut self,
        ptr: Value,
        mask: Option<Value>,
        other: Option<Value>,
        r: Value,
        i: ClValue,
    ) -> Res<Group> {
        let e = self.k.ty(r).elem;
        let Group::Seq(p0) = self.group(ptr, i)? else {
            return Err("load through a non-contiguous pointer".into());
        };
        let Some(m) = mask else {
            let addr = self.checked_group_addr(ptr, p0, AccessKind::Load)?;
            return Ok(Group::Lanes(self.load_lanes(addr, e, MemFlagsData::new())));
        };
        let lt = lane_type(e).ok_or("no lanes for this element type")?;
        let mask = self.group(m, i)?;
        let split = self.split_on_mask(mask)?;
        self.b.append_block_param(split.join, lt);

        self.b.switch_to_block(split.all);
        let addr = self.checked_group_addr(ptr, p0, AccessKind::Load)?;
        let x = self.load_lanes(addr, e, MemFlagsData::new());
        self.b.ins().jump(split.join, &[BlockArg::from(x)]);

        self.b.switch_to_block(split.none);
        let fallback = self.load_fallback(other, e, i)?;
        self.b.ins().jump(split.join, &[BlockArg::from(fallback)]);

        if let Some((some, mv)) = split.some {
            self.b.switch_to_block(some);
            let fallback = self.load_fallback(other, e, i)?;
            let mut x = fallback;
            for k in 0..4u8 {
                let addr = self.lane_or_scratch(ptr, mv, p0, e, k, AccessKind::Load)?;
                let y = self.b.ins().load(cl_type(e), MemFlagsData::new(), addr, 0);
                let y = if cl_type(e) == types::I16 {
                    self.b.ins().uextend(types::I32, y)
                } else {
                    y
                };
                x = self.b.ins().insertlane(x, y, k);
            }
            let x = super::consts::choose(&mut self.b, mv, x, fallback);
            self.b.ins().jump(split.join, &[BlockArg::from(x)]);
        }

        self.b.switch_to_block(split.join);
        Ok(Group::Lanes(self.b.block_params(split.join)[0]))
    }

    /// The lanes a masked load yields where its mask is off: `other`, or zero.
    fn load_fallback(&mut self, other: Option<Value>, e: Elem, i: ClValue) -> Res<ClValue> {
        match other {
            Some(o) => self.lanes(o, i),
            None => {
                let zero = self.constant(crate::ConstValue::Int(0), e)?;
                self.lanes_of_group(Group::Uniform(zero), e)
            }
        }
    }

    /// Stores the group at `i` of `value` through `ptr` where `mask` holds.
    pub(super) fn store_group(
        &mut self,
        ptr: Value,
        value: Value,
        mask: Option<Value>,
        i: ClValue,
    ) -> Res<()> {
        let e = self.k.ty(value).elem;
        let Group::Seq(p0) = self.group(ptr, i)? else {
            return Err("store through a non-contiguous pointer".into());
        };
        let x = self.lanes(value, i)?;
        let Some(m) = mask else {
            let addr = self.checked_group_addr(ptr, p0, AccessKind::Store)?;
            self.store_lanes(addr, x, e, MemFlagsData::new());
            return Ok(());
        };
        let mask = self.group(m, i)?;
        let split = self.split_on_mask(mask)?;

        self.b.switch_to_block(split.all);
        let addr = self.checked_group_addr(ptr, p0, AccessKind::Store)?;
        self.store_lanes(addr, x, e, MemFlagsData::new());
        self.b.ins().jump(split.join, &[]);

        self.b.switch_to_block(split.none);
        self.b.ins().jump(split.join, &[]);

        if let Some((some, mv)) = split.some {
            self.b.switch_to_block(some);
            for k in 0..4u8 {
                let addr = self.lane_or_scratch(ptr, mv, p0, e, k, AccessKind::Store)?;
                let y = self.b.ins().extractlane(x, k);
                let y = if cl_type(e) == types::I16 {
                    self.b.ins().ireduce(types::I16, y)
                } else {
                    y
                };
                self.b.ins().store(MemFlagsData::new(), y, addr, 0);
            }
            self.b.ins().jump(split.join, &[]);
        }
        self.b.switch_to_block(split.join);
        Ok(())
    }

    /// Branches on how many lanes of `mask` are on.
    fn split_on_mask(&mut self, mask: Group) -> Res<MaskSplit> {
        let (all, none, join) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        let some = match mask {
            Group::Uniform(m) => {
                self.b.ins().brif(m, all, &[], none, &[]);
                None
            }
            Group::Lanes(mv) => {
                let (partial, some) = (self.b.create_block(), self.b.create_block());
                let every = self.b.ins().vall_true(mv);
                self.b.ins().brif(every, all, &[], partial, &[]);
                self.b.switch_to_block(partial);
                let any = self.b.ins().vany_true(mv);
                self.b.ins().brif(any, some, &[], none, &[]);
                Some((some, mv))
            }
            Group::Seq(_) => return Err("a sequence as a mask".into()),
        };
        Ok(MaskSplit {
            all,
            none,
            some,
            join,
        })
    }

    /// The address of the four lanes from `p0` through `ptr`, or the scratch slot if they are
    /// not all inside its buffer (checked kernels only).
    fn checked_group_addr(&mut self, ptr: Value, p0: ClValue, kind: AccessKind) -> Res<ClValue> {
        let span = 4 * self.pointee_bytes(ptr)?;
        Ok(match self.check_access(ptr, p0, span, None, kind)? {
            Some(ok) => {
                let scratch = self.scratch_addr();
                self.b.ins().select(ok, p0, scratch)
            }
            None => p0,
        })
    }

    /// The address of lane `k` from lane 0's `p0`, or the scratch slot if `mask`'s lane is off
    /// (or, checked, the address is outside `ptr`'s buffer).
    fn lane_or_scratch(
        &mut self,
        ptr: Value,
        mask: ClValue,
        p0: ClValue,
        e: Elem,
        k: u8,
        kind: AccessKind,
    ) -> Res<ClValue> {
        let on = self.b.ins().extractlane(mask, k);
        let on = self.b.ins().icmp_imm_s(IntCC::NotEqual, on, 0);
        let p = self
            .b
            .ins()
            .iadd_imm_s(p0, i64::from(k) * i64::from(cl_type(e).bytes()));
        let span = self.pointee_bytes(ptr)?;
        let on = match self.check_access(ptr, p, span, Some(on), kind)? {
            Some(ok) => self.b.ins().band(on, ok),
            None => on,
        };
        let scratch = self.scratch_addr();
        Ok(self.b.ins().select(on, p, scratch))
    }
}

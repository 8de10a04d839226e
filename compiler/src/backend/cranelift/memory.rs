//! Loads, stores and atomics. Masks are branchless: a masked-off lane's address is redirected
//! to a scratch slot in the frame, so no user memory is touched where the mask is false. With
//! bounds checks, a lane whose address is outside its buffer is redirected the same way (and
//! its fault recorded, see `bounds`).

use super::lower::{cl_type, Lowerer, Res};
use crate::backend::AccessKind;
use crate::ir::{Elem, Value};
use crate::types::DType;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AtomicRmwOp, InstBuilder, MemFlagsData, StackSlotData, StackSlotKind, Value as ClValue,
};

impl Lowerer<'_, '_> {
    /// Sixteen bytes (a whole vector group) that masked-off or out-of-bounds accesses use
    /// instead of user memory.
    pub(super) fn scratch_addr(&mut self) -> ClValue {
        let slot = *self.scratch.get_or_insert_with(|| {
            self.b
                .create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, 16, 4))
        });
        self.b.ins().stack_addr(types::I64, slot, 0)
    }

    /// The address for lane `i`: the pointer where the mask holds (and the address is inside
    /// its buffer, when checked), the scratch slot elsewhere.
    fn lane_addr(
        &mut self,
        ptr: Value,
        mask: Option<Value>,
        i: ClValue,
        kind: AccessKind,
    ) -> Res<ClValue> {
        let p = self.elem(ptr, i)?;
        let m = mask.map(|m| self.elem(m, i)).transpose()?;
        let span = self.pointee_bytes(ptr)?;
        let on = match (m, self.check_access(ptr, p, span, m, kind)?) {
            (None, None) => return Ok(p),
            (Some(m), Some(ok)) => self.b.ins().band(m, ok),
            (Some(on), None) | (None, Some(on)) => on,
        };
        let scratch = self.scratch_addr();
        Ok(self.b.ins().select(on, p, scratch))
    }

    /// The size of the element `ptr` points to.
    pub(super) fn pointee_bytes(&self, ptr: Value) -> Res<u32> {
        let d = self
            .k
            .ty(ptr)
            .elem
            .pointee()
            .ok_or("access through a non-pointer")?;
        Ok(d.size_bytes() as u32)
    }

    /// Element `i` of `load(ptr, mask, other)`, whose result is `r`.
    pub(super) fn load_elem(
        &mut self,
        ptr: Value,
        mask: Option<Value>,
        other: Option<Value>,
        r: Value,
        i: ClValue,
    ) -> Res<ClValue> {
        let elem = self.k.ty(r).elem;
        let ty = cl_type(elem);
        let addr = self.lane_addr(ptr, mask, i, AccessKind::Load)?;
        let raw = self.b.ins().load(ty, MemFlagsData::new(), addr, 0);
        // Memory holds any byte for a bool; only zero is false.
        let x = if elem == Elem::Scalar(DType::Bool) {
            self.b.ins().icmp_imm_s(IntCC::NotEqual, raw, 0)
        } else {
            raw
        };
        let Some(m) = mask else { return Ok(x) };
        let m = self.elem(m, i)?;
        let fallback = match other {
            Some(o) => self.elem(o, i)?,
            None => self.constant(crate::ConstValue::Int(0), elem)?,
        };
        Ok(self.b.ins().select(m, x, fallback))
    }

    pub(super) fn store(&mut self, ptr: Value, value: Value, mask: Option<Value>) -> Res<()> {
        let n = self.k.ty(ptr).numel();
        if self.store_vectorizes(ptr, value, mask) {
            return self.group_loop(n, |l, i| l.store_group(ptr, value, mask, i));
        }
        self.counted_loop(n, |l, i| {
            let addr = l.lane_addr(ptr, mask, i, AccessKind::Store)?;
            let x = l.elem(value, i)?;
            l.b.ins().store(MemFlagsData::new(), x, addr, 0);
            Ok(())
        })
    }

    /// Atomic adds: i32 through `atomic_rmw add`, f32 through a compare-and-swap loop.
    pub(super) fn atomic_add(&mut self, ptr: Value, value: Value, mask: Option<Value>) -> Res<()> {
        let d = self.k.ty(value).dtype().ok_or("atomic_add of pointers")?;
        if !matches!(d, DType::I32 | DType::F32) {
            return Err(format!("atomic_add on {d} (only i32 and f32)"));
        }
        let n = self.k.ty(ptr).numel();
        self.counted_loop(n, |l, i| {
            let addr = l.lane_addr(ptr, mask, i, AccessKind::AtomicAdd)?;
            let x = l.elem(value, i)?;
            if d == DType::I32 {
                l.b.ins()
                    .atomic_rmw(types::I32, MemFlagsData::new(), AtomicRmwOp::Add, addr, x);
                return Ok(());
            }
            let retry = l.b.create_block();
            let done = l.b.create_block();
            l.b.append_block_param(retry, types::I32);
            let first = l.b.ins().atomic_load(types::I32, MemFlagsData::new(), addr);
            l.b.ins().jump(retry, &[first.into()]);
            l.b.switch_to_block(retry);
            let seen = l.b.block_params(retry)[0];
            let f = l.b.ins().bitcast(types::F32, MemFlagsData::new(), seen);
            let sum = l.b.ins().fadd(f, x);
            let sum = l.b.ins().bitcast(types::I32, MemFlagsData::new(), sum);
            let old = l.b.ins().atomic_cas(MemFlagsData::new(), addr, seen, sum);
            let ok = l.b.ins().icmp(IntCC::Equal, old, seen);
            l.b.ins().brif(ok, done, &[], retry, &[old.into()]);
            l.b.switch_to_block(done);
            Ok(())
        })
    }
}

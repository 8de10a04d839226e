//! Loads, stores and atomics through tiles of pointers, vectorised where [`super::axis`] proves
//! the addresses contiguous and aligned and the mask constant over each vector.

use super::bounds::AccessKind;
use super::layout::Layout;
use super::lower::{memory_type, Lowerer, Res};
use crate::ir::Value;
use crate::types::DType;
use inkwell::types::BasicType;
use inkwell::values::{AsValueRef, BasicValue, BasicValueEnum, IntValue, PointerValue, ValueKind};
use inkwell::IntPredicate;

type V<'ctx> = BasicValueEnum<'ctx>;

impl<'ctx> Lowerer<'_, 'ctx> {
    /// Elements per memory access through `ptr` in layout `l` (see [`Decisions`]).
    ///
    /// [`Decisions`]: super::decisions::Decisions
    pub fn vector_width(&self, l: &Layout, ptr: Value, mask: Option<Value>, d: DType) -> u32 {
        self.d.vector_width(l, ptr, mask, d)
    }

    /// Emits `if cond { body }`; returns the body's value merged with `default` by a phi.
    pub(super) fn guarded(
        &self,
        cond: Option<IntValue<'ctx>>,
        default: Option<V<'ctx>>,
        body: impl FnOnce(&Self) -> Res<Option<V<'ctx>>>,
    ) -> Res<Option<V<'ctx>>> {
        let Some(c) = cond else { return body(self) };
        let from = self.current_block()?;
        let then = self.ctx.append_basic_block(self.func, "guard");
        let cont = self.ctx.append_basic_block(self.func, "guard.end");
        self.b.build_conditional_branch(c, then, cont)?;
        self.b.position_at_end(then);
        let v = body(self)?;
        let then_end = self.current_block()?;
        self.b.build_unconditional_branch(cont)?;
        self.b.position_at_end(cont);
        Ok(match (v, default) {
            (Some(v), Some(d)) => {
                let phi = self.b.build_phi(v.get_type(), "")?;
                phi.add_incoming(&[(&v, then_end), (&d, from)]);
                Some(phi.as_basic_value())
            }
            _ => None,
        })
    }

    pub(super) fn and_opt(
        &self,
        a: Option<IntValue<'ctx>>,
        b: Option<IntValue<'ctx>>,
    ) -> Res<Option<IntValue<'ctx>>> {
        Ok(match (a, b) {
            (Some(a), Some(b)) => Some(self.b.build_and(a, b, "")?),
            (a, b) => a.or(b),
        })
    }

    /// The registers of `result = load(ptr, mask, other)`, in the result's layout.
    pub fn load(
        &mut self,
        ptr: Value,
        mask: Option<Value>,
        other: Option<Value>,
        result: Value,
    ) -> Res<Vec<V<'ctx>>> {
        let d = self
            .k
            .ty(ptr)
            .elem
            .pointee()
            .ok_or("load from a non-pointer".to_string())?;
        let l = self.layout(result);
        let w = self.vector_width(&l, ptr, mask, d);
        let ptrs = self.regs_as(ptr, &l)?;
        let masks = mask.map(|m| self.regs_as(m, &l)).transpose()?;
        // A zero `other` is what the masked load yields anyway.
        let other = other.filter(|o| !self.d.zeros.contains(o));
        let others = other.map(|o| self.regs_as(o, &l)).transpose()?;
        let mty = memory_type(self.ctx, d);
        let zero = super::lower::scalar_type(self.ctx, d).const_zero();
        let mut out = Vec::with_capacity(l.regs() as usize);
        for g in (0..l.regs() as usize).step_by(w as usize) {
            let cond = masks.as_ref().map(|m| m[g].into_int_value());
            let p = ptrs[g].into_pointer_value();
            let align = w * d.size_bytes() as u32;
            let inside = self.check_access(ptr, p, align, cond, AccessKind::Load)?;
            let cond = self.and_opt(cond, inside)?;
            let loaded: Vec<V> = if w == 1 {
                let v = self
                    .guarded(cond, Some(zero), |s| {
                        let raw = s.b.build_load(mty, p, "")?;
                        set_align(raw, d.size_bytes() as u32);
                        Ok(Some(s.register_from_memory(raw, d)?))
                    })?
                    .ok_or("load lost its value".to_string())?;
                vec![v]
            } else {
                let (raw_ty, vty) = (self.access_type(w, d), self.vector_of(d, w));
                let raw = match cond {
                    Some(c) if raw_ty.get_element_type().is_int_type() => {
                        self.predicated_load(p, c, raw_ty)?
                    }
                    _ => {
                        let raw = self.guarded(cond, Some(raw_ty.const_zero().into()), |s| {
                            let raw = s.b.build_load(raw_ty, p, "")?;
                            set_align(raw, align);
                            Ok(Some(raw))
                        })?;
                        raw.ok_or("load lost its value".to_string())?
                    }
                };
                let v = self.b.build_bit_cast(raw, vty, "")?.into_vector_value();
                (0..w)
                    .map(|j| {
                        self.b
                            .build_extract_element(v, self.i32(j as u64), "")
                            .map_err(Into::into)
                    })
                    .collect::<Res<_>>()?
            };
            for (j, v) in loaded.into_iter().enumerate() {
                let i = g + j;
                out.push(match (&masks, &others) {
                    (Some(m), Some(o)) => {
                        // A lane out of bounds yields `other`, as if masked off.
                        let keep = match inside {
                            Some(inside) => self.b.build_and(m[i].into_int_value(), inside, "")?,
                            None => m[i].into_int_value(),
                        };
                        self.b.build_select(keep, v, o[i], "")?
                    }
                    _ => v,
                });
            }
        }
        Ok(out)
    }

    /// `store` (or `atomic_add` when `atomic`): only the owner of each element writes it. The
    /// access follows the value's layout if it is an MMA tile (the pointers and mask are usually
    /// recomputed in it), else the pointers'.
    pub fn store(
        &mut self,
        ptr: Value,
        value: Value,
        mask: Option<Value>,
        atomic: bool,
    ) -> Res<()> {
        let d = self
            .k
            .ty(ptr)
            .elem
            .pointee()
            .ok_or("store to a non-pointer".to_string())?;
        let l = self.d.store_layout(ptr, value);
        let w = if atomic {
            1
        } else {
            self.vector_width(&l, ptr, mask, d)
        };
        let ptrs = self.regs_as(ptr, &l)?;
        let vals = self.regs_as(value, &l)?;
        let masks = mask.map(|m| self.regs_as(m, &l)).transpose()?;
        let owner = self.owner(&l)?;
        for g in (0..l.regs() as usize).step_by(w as usize) {
            let cond = self.and_opt(owner, masks.as_ref().map(|m| m[g].into_int_value()))?;
            let p = ptrs[g].into_pointer_value();
            let kind = match atomic {
                true => AccessKind::AtomicAdd,
                false => AccessKind::Store,
            };
            let inside = self.check_access(ptr, p, w * d.size_bytes() as u32, cond, kind)?;
            let cond = self.and_opt(cond, inside)?;
            self.guarded(cond, None, |s| {
                if atomic {
                    s.atomic_add(p, vals[g], d)?;
                } else if w == 1 {
                    let v = s.register_to_memory(vals[g], d)?;
                    let st = s.b.build_store(p, v)?;
                    st.set_alignment(d.size_bytes() as u32)
                        .map_err(|e| e.to_string())?;
                } else {
                    let mut vec = self.vector_of(d, w).get_undef();
                    for j in 0..w as usize {
                        vec =
                            s.b.build_insert_element(vec, vals[g + j], s.i32(j as u64), "")?;
                    }
                    let raw = s.b.build_bit_cast(vec, s.access_type(w, d), "")?;
                    let st = s.b.build_store(p, raw)?;
                    st.set_alignment(w * d.size_bytes() as u32)
                        .map_err(|e| e.to_string())?;
                }
                Ok(None)
            })?;
        }
        Ok(())
    }

    fn atomic_add(&self, p: PointerValue<'ctx>, v: V<'ctx>, d: DType) -> Res<()> {
        use inkwell::llvm_sys::core::LLVMBuildAtomicRMW;
        use inkwell::llvm_sys::{LLVMAtomicOrdering, LLVMAtomicRMWBinOp};
        let op = match d {
            DType::F32 => LLVMAtomicRMWBinOp::LLVMAtomicRMWBinOpFAdd,
            DType::I32 => LLVMAtomicRMWBinOp::LLVMAtomicRMWBinOpAdd,
            _ => return Err(format!("atomic_add on {d}").into()),
        };
        // SAFETY: the builder is positioned, `p` is a global pointer and `v` matches its pointee;
        // inkwell's wrapper only accepts integers, hence the direct call.
        unsafe {
            LLVMBuildAtomicRMW(
                self.b.as_mut_ptr(),
                op,
                p.as_value_ref(),
                v.as_value_ref(),
                LLVMAtomicOrdering::LLVMAtomicOrderingMonotonic,
                0,
            );
        }
        Ok(())
    }

    /// `@pred ld.global.v{n}.b32` in inline PTX, zero where `pred` is false. A branch around an
    /// LLVM vector load would do, but LLVM splits a vector phi into scalars and then the load too.
    fn predicated_load(
        &self,
        p: PointerValue<'ctx>,
        pred: IntValue<'ctx>,
        ty: inkwell::types::VectorType<'ctx>,
    ) -> Res<V<'ctx>> {
        let words = ty.get_size();
        let i32t = self.ctx.i32_type();
        let outs: Vec<String> = (0..words).map(|i| format!("${i}")).collect();
        let mut asm: String = outs.iter().map(|o| format!("mov.b32 {o}, 0;\n")).collect();
        let (suffix, dst) = match words {
            1 => (String::new(), outs[0].clone()),
            n => (format!(".v{n}"), format!("{{{}}}", outs.join(", "))),
        };
        asm += &format!("@${} ld.global{suffix}.b32 {dst}, [${}];", words + 1, words);
        let constraints = "=r,".repeat(words as usize) + "l,b";
        let ret: inkwell::types::BasicTypeEnum = if words == 1 {
            i32t.into()
        } else {
            let fields = vec![i32t.into(); words as usize];
            self.ctx.struct_type(&fields, false).into()
        };
        let fn_ty = ret.fn_type(
            &[self.ctx.i64_type().into(), self.ctx.bool_type().into()],
            false,
        );
        // Side effects on: the load must not move across stores to the same memory.
        let asm = self
            .ctx
            .create_inline_asm(fn_ty, asm, constraints, true, false, None, false);
        let addr = self.b.build_ptr_to_int(p, self.ctx.i64_type(), "")?;
        let call = self
            .b
            .build_indirect_call(fn_ty, asm, &[addr.into(), pred.into()], "")?;
        let ValueKind::Basic(result) = call.try_as_basic_value() else {
            return Err("inline load returned nothing".to_string().into());
        };
        let mut v = ty.get_undef();
        for i in 0..words {
            let word = if words == 1 {
                result
            } else {
                self.b
                    .build_extract_value(result.into_struct_value(), i, "")?
            };
            v = self
                .b
                .build_insert_element(v, word, self.i32(i as u64), "")?;
        }
        Ok(v.into())
    }

    /// The type one vector access of `w` elements uses: 32-bit words (so that LLVM keeps
    /// `<4 x bf16>` as one `ld.v2.b32` rather than splitting it, and masked loads of any type go
    /// through [`Self::predicated_load`]).
    fn access_type(&self, w: u32, d: DType) -> inkwell::types::VectorType<'ctx> {
        let bytes = w * d.size_bytes() as u32;
        if bytes >= 4 {
            self.ctx.i32_type().vec_type(bytes / 4)
        } else {
            self.vector_of(d, w)
        }
    }

    /// `<n x d>` with `d` as it is in memory.
    fn vector_of(&self, d: DType, n: u32) -> inkwell::types::VectorType<'ctx> {
        let c = self.ctx;
        match d {
            DType::Bool => c.i8_type().vec_type(n),
            DType::I32 => c.i32_type().vec_type(n),
            DType::I64 => c.i64_type().vec_type(n),
            DType::F16 => c.f16_type().vec_type(n),
            DType::Bf16 => c.bf16_type().vec_type(n),
            DType::F32 => c.f32_type().vec_type(n),
        }
    }

    /// A register value as stored in memory (`bool` becomes a byte).
    pub fn register_to_memory(&self, v: V<'ctx>, d: DType) -> Res<V<'ctx>> {
        Ok(if d == DType::Bool {
            self.b
                .build_int_z_extend(v.into_int_value(), self.ctx.i8_type(), "")?
                .into()
        } else {
            v
        })
    }

    /// A value loaded from memory as a register (`bool` is `byte != 0`).
    pub fn register_from_memory(&self, v: V<'ctx>, d: DType) -> Res<V<'ctx>> {
        Ok(if d == DType::Bool {
            let i = v.into_int_value();
            self.b
                .build_int_compare(IntPredicate::NE, i, i.get_type().const_zero(), "")?
                .into()
        } else {
            v
        })
    }
}

fn set_align(v: BasicValueEnum, align: u32) {
    if let Some(i) = v.as_instruction_value() {
        // Only fails for non-memory instructions, which a load is not.
        let _ = i.set_alignment(align);
    }
}

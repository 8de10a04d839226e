//! Software pipelining of the tiles a loop loads for its tensor-core `dot`s
//! ([`super::PtxOptions::num_stages`] > 1).
//!
//! A load at the top level of a `for` body whose only uses are as operands of tensor-core dots
//! in that body (directly or through a `trans` the dot absorbs) never passes through registers:
//! it is copied from global to shared memory with `cp.async`, into a ring of `S = num_stages`
//! buffers, `S - 1` iterations ahead of the dot that reads it (with `ldmatrix`, or `wgmma`
//! through a descriptor):
//!
//! ```text
//! prologue:     for s in 0..S-1 { copy the tiles of iteration s into stage s; commit }
//! iteration i:  wait until at most S-2 copy groups are pending; barrier
//!               copy the tiles of iteration i+S-1 into stage (i-1) mod S; commit
//!               the body, whose dots read stage i mod S
//! exit:         wait for every group; barrier
//! ```
//!
//! The barrier at the top of iteration `i` publishes stage `i mod S` to the whole block, and
//! tells each thread that every other one has finished reading stage `(i-1) mod S`, the one it
//! is about to overwrite. Copies for iterations past the last are issued with size 0 (zero fill,
//! nothing read), so every thread commits the same groups and the wait counts stay uniform.
//!
//! A `wgmma` accumulation `acc = dot(x, y, acc)` on pipelined tiles is left running at the end
//! of an iteration and waited for at the end of the next (`wgmma.wait_group 1`; after the loop,
//! 0), so the tensor cores never wait for the loop's bookkeeping. Its tiles of iteration `i - 1`
//! may then still be read during iteration `i`, so such a loop copies only `S - 2` iterations
//! ahead, into stage `(i-2) mod S`.
//!
//! The addresses and masks of the iterations ahead come from the body itself: the instructions
//! they depend on (the load's *cone*) are pure functions of the induction variable and of
//! values defined before the loop, and are lowered once more with the induction variable
//! advanced. Loads whose cone reads anything else (a loop-carried value, another load) stay as
//! they are.
//!
//! In bounds-checked kernels (see `bounds`) each copy is checked like the load it stands for;
//! one out of bounds is issued with size 0.
//!
//! The stages are at most [`super::MAX_STAGES`], and each ring's size is checked (in `u64`)
//! against the target's shared memory when it is claimed, before any copy is unrolled.

use super::bounds::AccessKind;
use super::decisions::{Decisions, WidthLimit};
use super::layout::Layout;
use super::lower::{LowerError, Lowerer, Res};
use super::mma::SharedTile;
use super::shared::align_tile;
use super::wgmma::{has_descriptor, is_warpgroup_accumulator};
use crate::ir::{Block, Op, Value};
use inkwell::values::{BasicValue, IntValue, PointerValue};
use inkwell::IntPredicate;
use std::collections::{HashMap, HashSet};

/// How one loop is pipelined.
pub struct LoopPlan {
    pub stages: u32,
    /// Iterations the copies run ahead: `stages - 1`, or `stages - 2` when a `wgmma`
    /// accumulation stays in flight into the next iteration (see [`LoopPlan::in_flight`]).
    ahead: u32,
    /// The dot whose `wgmma`s are left running at the end of an iteration (waited for at the
    /// end of the next one), and the index of the carried value it accumulates into.
    pub in_flight: Option<(Value, usize)>,
    /// The body instructions (by index) the copies' addresses and masks are computed by, in
    /// program order.
    cone: Vec<usize>,
    loads: Vec<PipedLoad>,
    /// Bytes of one stage: every pipelined tile of one iteration.
    stage_bytes: u32,
}

/// A load copied straight to shared memory.
struct PipedLoad {
    value: Value,
    ptr: Value,
    mask: Option<Value>,
    /// Where the tile is in a stage (`base` is the offset in the stage).
    tile: SharedTile,
    /// Elements per `cp.async` (4, 8 or 16 bytes).
    width: u32,
}

/// What the pipeline makes of one loop.
pub struct PipelineReport {
    /// The plan, if any load qualifies.
    pub plan: Option<LoopPlan>,
    /// Loads used only as tensor-core dot operands that are not pipelined, and why.
    pub skipped: Vec<(Value, String)>,
    /// How many loads are used only as tensor-core dot operands (pipelined or not).
    pub candidates: usize,
    /// Why the loop cannot be compiled as asked: one stage does not fit in shared memory.
    pub error: Option<String>,
}

impl LoopPlan {
    /// The plan as `--emit layouts` prints it after the loop.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "pipeline: {} stages, copies {} iteration{} ahead, {} bytes a stage",
            self.stages,
            self.ahead,
            if self.ahead == 1 { "" } else { "s" },
            self.stage_bytes
        );
        if self.in_flight.is_some() {
            text += ", wgmma left in flight across iterations";
        }
        text
    }

    /// Each pipelined load and how it is copied, as `--emit layouts` prints it.
    pub fn piped_loads(&self) -> impl Iterator<Item = (Value, String)> + '_ {
        self.loads.iter().map(|l| {
            (
                l.value,
                format!(
                    "cp.async {} bytes a copy into the ring at stage offset {}, {} ahead",
                    2 * l.width,
                    l.tile.base,
                    self.ahead
                ),
            )
        })
    }
}

impl Decisions<'_> {
    /// How the loop with body `body` is pipelined: the plan if any of its loads qualify, the
    /// dot operand loads that do not and why, or an error if one stage of them cannot fit in
    /// shared memory.
    pub fn pipeline_report(&self, body: &Block) -> PipelineReport {
        let mut report = PipelineReport {
            plan: None,
            skipped: vec![],
            candidates: 0,
            error: None,
        };
        let stages = self.num_stages;
        if stages < 2 {
            return report;
        }
        let top: HashMap<Value, usize> = body
            .insts
            .iter()
            .enumerate()
            .flat_map(|(i, inst)| inst.results.iter().map(move |&r| (r, i)))
            .collect();
        let mut loads = vec![];
        let mut cone = HashSet::new();
        let mut offset = 0;
        for inst in &body.insts {
            let Op::Load { ptr, mask, other } = &inst.op else {
                continue;
            };
            let x = inst.results[0];
            let dot_uses = self.dot_operand_uses(body, x);
            if dot_uses == 0 {
                continue;
            }
            let mut skip = |why: String| report.skipped.push((x, why));
            if self.du.use_count(x) != dot_uses {
                skip("it is also used other than as a tensor-core dot operand".into());
                continue;
            }
            report.candidates += 1;
            if other.is_some_and(|o| !self.zeros.contains(&o)) {
                skip("its `other:` value is not zero (cp.async fills with zeros)".into());
                continue;
            }
            let width = match self.copy_width(x, *ptr, *mask) {
                Ok(w) => w,
                Err(why) => {
                    skip(why);
                    continue;
                }
            };
            let mut needs = HashSet::new();
            let invariant = [*ptr]
                .into_iter()
                .chain(*mask)
                .all(|v| cone_of(body, &top, v, &mut needs));
            if !invariant {
                skip(
                    "its address or mask depends on a loop-carried value or on another load".into(),
                );
                continue;
            }
            cone.extend(needs);
            let tile = SharedTile {
                base: offset,
                ..self.shared_tile(x)
            };
            offset = match self.stage_end(offset, &tile) {
                Ok(end) => end,
                Err(e) => {
                    report.error = Some(e);
                    return report;
                }
            };
            loads.push(PipedLoad {
                value: x,
                ptr: *ptr,
                mask: *mask,
                tile,
                width,
            });
        }
        if loads.is_empty() {
            return report;
        }
        let mut cone: Vec<usize> = cone.into_iter().collect();
        cone.sort_unstable();
        let in_flight = match stages {
            3.. => self.accumulation_in_flight(body, &loads),
            _ => None,
        };
        report.plan = Some(LoopPlan {
            stages,
            ahead: stages - 1 - u32::from(in_flight.is_some()),
            in_flight,
            cone,
            loads,
            stage_bytes: offset,
        });
        report
    }

    /// Where the next tile of a stage may start after `tile`; an error once the stage no
    /// longer fits in shared memory (so that every offset stays far from overflowing).
    fn stage_end(&self, offset: u32, tile: &SharedTile) -> Result<u32, String> {
        let limit = self.arch.max_shared_bytes();
        let end = u64::from(offset) + u64::from(tile.rows) * u64::from(tile.cols) * 2;
        match u32::try_from(end) {
            Ok(end) if end <= limit => Ok(align_tile(end)),
            _ => Err(format!(
                "one stage of the loop pipeline needs more than the {limit} bytes of shared \
                 memory a block may have on {}; use smaller tiles or num_stages = 1",
                self.arch.name()
            )),
        }
    }

    /// The dot of `body` that may keep its `wgmma`s running across the iteration's end: it
    /// accumulates into a carried value that nothing else reads or writes (`acc = dot(x, y,
    /// acc)`, the value yielded straight back), both operands are pipelined loads, and it runs
    /// as `wgmma`. The next iteration's own `wgmma`s queue behind it on the same registers; the
    /// ring then keeps one more stage for the tiles it is still reading.
    fn accumulation_in_flight(&self, body: &Block, loads: &[PipedLoad]) -> Option<(Value, usize)> {
        if !self.wgmma {
            return None;
        }
        let Some(Op::Yield(yielded)) = body.insts.last().map(|i| &i.op) else {
            return None;
        };
        let piped = |v: Value| {
            let src = self.staged_source(v);
            loads
                .iter()
                .find(|l| l.value == src)
                .map(|l| has_descriptor(&l.tile))
        };
        body.insts.iter().find_map(|inst| {
            let Op::Dot { a, b, acc } = &inst.op else {
                return None;
            };
            let r = inst.results[0];
            let carried = body.args[1..].iter().position(|x| x == acc)?;
            let Layout::Mma(l) = self.layout(r) else {
                return None;
            };
            let fits = yielded.get(carried) == Some(&r)
                && self.du.use_count(r) == 1
                && self.du.use_count(*acc) == 1
                && piped(*a) == Some(true)
                && piped(*b) == Some(true)
                && is_warpgroup_accumulator(&l);
            fits.then_some((r, carried))
        })
    }

    /// How many of `x`'s uses are as the operand of a tensor-core dot at the top of `body`,
    /// directly or through a `trans` that such dots alone use.
    fn dot_operand_uses(&self, body: &Block, x: Value) -> usize {
        let mut n = 0;
        for inst in &body.insts {
            match &inst.op {
                Op::Dot { a, b, .. } if matches!(self.layout(inst.results[0]), Layout::Mma(_)) => {
                    n += usize::from(*a == x) + usize::from(*b == x);
                }
                Op::Trans(v) if *v == x && self.assign.is_free_trans(inst.results[0]) => {
                    let t = inst.results[0];
                    if self.du.use_count(t) == self.dot_operand_uses(body, t) {
                        n += 1;
                    }
                }
                _ => {}
            }
        }
        n
    }

    /// Elements per `cp.async` for load `x` (which must be a 16-bit tile in the blocked layout
    /// whose vectors are at least 4 bytes), or why it cannot be copied so.
    fn copy_width(&self, x: Value, ptr: Value, mask: Option<Value>) -> Result<u32, String> {
        let l = self.layout(x);
        let d = self.k.ty(x).dtype().ok_or("it loads pointers")?;
        let shape = &self.k.ty(x).shape;
        if !matches!(l, Layout::Blocked(_)) || d.size_bytes() != 2 || shape.len() != 2 {
            return Err(format!(
                "cp.async copies 2-D 16-bit tiles in the blocked layout, not a {}",
                self.k.ty(x)
            ));
        }
        let access = self.access_width(&l, ptr, mask, d);
        let w = access.width.min(SharedTile::CHUNK).min(shape[1]);
        if w >= 2 {
            return Ok(w);
        }
        let mut why = match access.limit {
            Some(WidthLimit::Alignment(_)) if !self.aligned => {
                "its addresses are not known to be 4-byte aligned".to_string()
            }
            Some(limit) => limit.to_string(),
            None => "its rows are one element wide".into(),
        };
        if !self.aligned && access.limit.is_some() {
            // Alignment and the masks' runs both follow from the launch's specialisation.
            why += " (compile with --aligned and the integer parameters that are multiples of \
                    16, or launch with 16-byte aligned pointers and sizes)";
        }
        Err(format!(
            "cp.async copies at least 4 bytes, and its accesses are {} element wide: {why}",
            w
        ))
    }
}

impl<'ctx> Lowerer<'_, 'ctx> {
    /// Claims `plan`'s ring in the pipeline region; returns its offset there. Refused, before
    /// any copy is unrolled, when the rings would not fit in shared memory.
    pub fn claim_ring(&self, plan: &LoopPlan) -> Res<u32> {
        let region = self.pipe_bytes.get();
        let limit = self.arch.max_shared_bytes();
        let ring = u64::from(plan.stages) * u64::from(plan.stage_bytes);
        let end = u64::from(region) + ring;
        match u32::try_from(end) {
            Ok(end) if end <= limit => {
                self.pipe_bytes.set(end);
                Ok(region)
            }
            _ => Err(LowerError(format!(
                "the loop pipeline needs {end} bytes of shared memory ({} stages of {} bytes{}), \
                 more than the {limit} a block may have on {}; use fewer stages or smaller tiles",
                plan.stages,
                plan.stage_bytes,
                match region {
                    0 => String::new(),
                    r => format!(" after {r} for other loops"),
                },
                self.arch.name()
            ))),
        }
    }

    /// Copies the tiles of the iteration whose induction variable is `iv` into stage `stage`
    /// (zero-filled where `valid` is false), and commits them as one group.
    pub fn issue_copies(
        &mut self,
        body: &Block,
        plan: &LoopPlan,
        region: u32,
        iv: IntValue<'ctx>,
        valid: IntValue<'ctx>,
        stage: IntValue<'ctx>,
    ) -> Res<()> {
        self.define(body.args[0], vec![iv.as_basic_value_enum()]);
        for &i in &plan.cone {
            self.inst(&body.insts[i])?;
        }
        for load in &plan.loads {
            self.copy_tile(load, plan, region, valid, stage)?;
        }
        self.call_void("llvm.nvvm.cp.async.commit.group", &[])
    }

    fn copy_tile(
        &self,
        load: &PipedLoad,
        plan: &LoopPlan,
        region: u32,
        valid: IntValue<'ctx>,
        stage: IntValue<'ctx>,
    ) -> Res<()> {
        let l = self.layout(load.value);
        let ptrs = self.regs_as(load.ptr, &l)?;
        let masks = load.mask.map(|m| self.regs_as(m, &l)).transpose()?;
        let buffer = self.stage_buffer(plan, region, stage, load)?;
        let tile = SharedTile {
            base: 0,
            ..load.tile
        };
        let w = load.width;
        let bytes = 2 * w;
        let copy = self.cp_async(bytes);
        let full = self.i32(bytes as u64);
        let none = self.i32(0);
        let addresses = self.run_addresses(buffer, &tile, &l, w)?;
        for (g, dst) in (0..l.regs() as usize).step_by(w as usize).zip(addresses) {
            let ok = match &masks {
                Some(m) => self.b.build_and(m[g].into_int_value(), valid, "")?,
                None => valid,
            };
            let src = ptrs[g];
            // A copy out of bounds reads nothing (size 0), as if masked off.
            let inside = self.check_access(
                load.ptr,
                src.into_pointer_value(),
                bytes,
                Some(ok),
                AccessKind::Load,
            )?;
            let ok = match inside {
                Some(inside) => self.b.build_and(ok, inside, "")?,
                None => ok,
            };
            let size = self.b.build_select(ok, full, none, "")?;
            self.b.build_indirect_call(
                copy.0,
                copy.1,
                &[dst.into(), src.into(), size.into()],
                "",
            )?;
        }
        Ok(())
    }

    /// `cp.async` of `bytes` bytes (`.cg`, bypassing L1, for whole 16-byte chunks) with a
    /// source size operand, in inline PTX: LLVM 19 cannot select the intrinsic when shared
    /// addresses are 32-bit (see `target`).
    fn cp_async(
        &self,
        bytes: u32,
    ) -> (
        inkwell::types::FunctionType<'ctx>,
        inkwell::values::PointerValue<'ctx>,
    ) {
        let cache = if bytes == 16 { "cg" } else { "ca" };
        let asm = format!("cp.async.{cache}.shared.global [$0], [$1], {bytes}, $2;");
        let fn_ty = self.ctx.void_type().fn_type(
            &[
                self.ctx.ptr_type(inkwell::AddressSpace::from(3)).into(),
                self.ctx.ptr_type(inkwell::AddressSpace::from(1)).into(),
                self.ctx.i32_type().into(),
            ],
            false,
        );
        let asm = self.ctx.create_inline_asm(
            fn_ty,
            asm,
            "r,l,r,~{memory}".into(),
            true,
            false,
            None,
            false,
        );
        (fn_ty, asm)
    }

    /// The shared address of `load`'s tile in stage `stage` of the ring at `region`.
    fn stage_buffer(
        &self,
        plan: &LoopPlan,
        region: u32,
        stage: IntValue<'ctx>,
        load: &PipedLoad,
    ) -> Res<PointerValue<'ctx>> {
        let start = self
            .b
            .build_int_mul(stage, self.i32(plan.stage_bytes as u64), "")?;
        let off = self
            .b
            .build_int_add(start, self.i32((region + load.tile.base) as u64), "")?;
        // SAFETY: within the claimed pipeline region.
        Ok(unsafe {
            self.b
                .build_in_bounds_gep(self.ctx.i8_type(), self.pipe, &[off], "stage")?
        })
    }

    /// Before the loop: the copies of the first iterations, as far ahead as the loop runs.
    pub fn pipeline_prologue(
        &mut self,
        body: &Block,
        plan: &LoopPlan,
        region: u32,
        (lo, hi, step): (IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>),
    ) -> Res<()> {
        for s in 0..plan.ahead {
            let ahead = self.b.build_int_mul(step, like(step, s), "")?;
            let iv = self.b.build_int_add(lo, ahead, "")?;
            let valid = self.b.build_int_compare(IntPredicate::SLT, iv, hi, "")?;
            self.issue_copies(body, plan, region, iv, valid, self.i32(s as u64))?;
        }
        Ok(())
    }

    /// At the top of an iteration: waits for its stage, then copies the tiles of the iteration
    /// `ahead` iterations on into the stage `ahead` on from this one (the one the previous
    /// iteration read, or the one before that while a `wgmma` of the previous iteration may
    /// still read its own). The body's loads then read stage `read_stage`.
    pub fn pipeline_iteration(
        &mut self,
        body: &Block,
        plan: &LoopPlan,
        region: u32,
        (iv, hi, step): (IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>),
        read_stage: IntValue<'ctx>,
    ) -> Res<()> {
        let (s, ahead) = (plan.stages, plan.ahead);
        let pending = self.i32(ahead as u64 - 1);
        self.call_void("llvm.nvvm.cp.async.wait.group", &[pending.into()])?;
        if self.wgmma {
            // The copies were made by the generic proxy; `wgmma` reads through the async one.
            self.fence_async_proxy()?;
        }
        self.barrier()?;
        let distance = self.b.build_int_mul(step, like(step, ahead), "")?;
        let next = self.b.build_int_add(iv, distance, "")?;
        let valid = self.b.build_int_compare(IntPredicate::SLT, next, hi, "")?;
        // (read_stage + ahead) mod S.
        let on = self
            .b
            .build_int_add(read_stage, self.i32(ahead as u64), "")?;
        let wraps = self
            .b
            .build_int_compare(IntPredicate::UGE, on, self.i32(s as u64), "")?;
        let wrapped = self.b.build_int_sub(on, self.i32(s as u64), "")?;
        let write = self
            .b
            .build_select(wraps, wrapped, on, "")?
            .into_int_value();
        self.issue_copies(body, plan, region, next, valid, write)?;
        self.define(body.args[0], vec![iv.as_basic_value_enum()]);
        for load in &plan.loads {
            let buffer = self.stage_buffer(plan, region, read_stage, load)?;
            let tile = SharedTile {
                base: 0,
                ..load.tile
            };
            self.piped.insert(load.value, (buffer, tile));
        }
        if let Some((dot, _)) = plan.in_flight {
            self.in_flight.insert(dot);
        }
        Ok(())
    }

    /// The stage the next iteration reads.
    pub fn next_stage(&self, plan: &LoopPlan, read_stage: IntValue<'ctx>) -> Res<IntValue<'ctx>> {
        let last = self.b.build_int_compare(
            IntPredicate::EQ,
            read_stage,
            self.i32(plan.stages as u64 - 1),
            "",
        )?;
        let after = self.b.build_int_add(read_stage, self.i32(1), "")?;
        Ok(self
            .b
            .build_select(last, self.i32(0), after, "")?
            .into_int_value())
    }

    /// After the loop: no copy may still be writing, and no thread still reading, when the ring
    /// is reused.
    pub fn pipeline_epilogue(&mut self, plan: &LoopPlan) -> Res<()> {
        for load in &plan.loads {
            self.piped.remove(&load.value);
        }
        if let Some((dot, _)) = plan.in_flight {
            self.in_flight.remove(&dot);
        }
        self.call_void("llvm.nvvm.cp.async.wait.all", &[])?;
        self.barrier()
    }
}

/// The constant `c` of the type of `x`: the induction variable's arithmetic stays in its own
/// type (`i32` or `i64`).
fn like<'ctx>(x: IntValue<'ctx>, c: u32) -> IntValue<'ctx> {
    x.get_type().const_int(c as u64, false)
}

/// Adds to `needs` the top-level instructions of `body` that `v` depends on; false if it
/// depends on anything but the induction variable, values defined before the loop and pure
/// tile arithmetic.
fn cone_of(
    body: &Block,
    top: &HashMap<Value, usize>,
    v: Value,
    needs: &mut HashSet<usize>,
) -> bool {
    if body.args[1..].contains(&v) {
        return false;
    }
    let Some(&i) = top.get(&v) else {
        // The induction variable, or a value from before the loop.
        return true;
    };
    if !needs.insert(i) {
        return true;
    }
    let op = &body.insts[i].op;
    let pure = op.is_elementwise()
        || matches!(
            op,
            Op::Const(_)
                | Op::Range(_)
                | Op::Splat(_)
                | Op::Reshape(_)
                | Op::Broadcast(_)
                | Op::ProgramId(_)
                | Op::NumPrograms(_)
        );
    pure && op
        .operands()
        .into_iter()
        .all(|a| cone_of(body, top, a, needs))
}

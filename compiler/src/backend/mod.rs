//! Code generators: tile IR to native code (Cranelift) and to PTX (LLVM NVPTX).

pub mod cranelift;
#[cfg(feature = "nvptx")]
pub mod nvptx;

/// A failure inside a code generator. User errors are caught by `sema`; this names the kernel
/// and what the backend could not do.
#[derive(Debug, thiserror::Error)]
#[error("{backend} backend, kernel `{kernel}`: {message}")]
pub struct BackendError {
    pub backend: &'static str,
    pub kernel: String,
    pub message: String,
}

/// What a memory access does, as a bounds-checked kernel records it in its fault record (the
/// same codes on both backends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    Load = 1,
    Store = 2,
    AtomicAdd = 3,
}

impl AccessKind {
    /// The kind a fault record's code names.
    pub fn from_code(code: u64) -> Option<AccessKind> {
        match code {
            1 => Some(AccessKind::Load),
            2 => Some(AccessKind::Store),
            3 => Some(AccessKind::AtomicAdd),
            _ => None,
        }
    }

    /// The access as a noun (`a store`).
    pub fn describe(self) -> &'static str {
        match self {
            AccessKind::Load => "a load",
            AccessKind::Store => "a store",
            AccessKind::AtomicAdd => "an atomic add",
        }
    }
}

/// The IR of `k` annotated with what the CPU backend decides for each instruction before it
/// emits code (`kiln compile --emit layouts` in a build without the GPU backend): after `cpu:`,
/// which tiles Cranelift fuses into their users and which loops run four lanes at a time. The
/// text still parses as IR.
pub fn print_layouts(k: &crate::ir::Kernel) -> String {
    annotate(k, None::<&NoGpu>)
}

/// The IR of `k` annotated with what both backends decide for each instruction before they emit
/// code (`kiln compile --emit layouts`): after `gpu:`, the layout of each tile, the width of
/// each memory access, the path of each `dot` (FMA loop, `mma.sync` or `wgmma`) and the
/// pipeline of each loop, for the options `opts`; after `cpu:`, as [`print_layouts`]. Where an
/// optimisation `opts` ask for does not apply, a `note:` line says which and why. The text
/// still parses as IR.
#[cfg(feature = "nvptx")]
pub fn print_layouts_gpu(k: &crate::ir::Kernel, opts: &nvptx::PtxOptions) -> String {
    annotate(k, Some(&nvptx::Annotations::new(k, opts)))
}

/// What a GPU backend says about a kernel for [`print_layouts_gpu`].
trait GpuFacts {
    /// The target and options, in a few words.
    fn header(&self) -> String;
    /// The notes about the kernel as a whole.
    fn kernel_notes(&self) -> Vec<String>;
    /// What was decided about `inst`, if anything.
    fn facts(&self, inst: &crate::ir::Inst) -> Option<String>;
    /// The notes about `inst`.
    fn notes(&self, inst: &crate::ir::Inst) -> Vec<String>;
}

#[cfg(feature = "nvptx")]
impl GpuFacts for nvptx::Annotations<'_> {
    fn header(&self) -> String {
        nvptx::Annotations::header(self).to_string()
    }
    fn kernel_notes(&self) -> Vec<String> {
        nvptx::Annotations::kernel_notes(self)
            .map(String::from)
            .collect()
    }
    fn facts(&self, inst: &crate::ir::Inst) -> Option<String> {
        nvptx::Annotations::facts(self, inst)
    }
    fn notes(&self, inst: &crate::ir::Inst) -> Vec<String> {
        nvptx::Annotations::notes(self, inst)
            .map(String::from)
            .collect()
    }
}

/// Stands for the GPU in [`print_layouts`].
struct NoGpu;

impl GpuFacts for NoGpu {
    fn header(&self) -> String {
        String::new()
    }
    fn kernel_notes(&self) -> Vec<String> {
        vec![]
    }
    fn facts(&self, _: &crate::ir::Inst) -> Option<String> {
        None
    }
    fn notes(&self, _: &crate::ir::Inst) -> Vec<String> {
        vec![]
    }
}

fn annotate<G: GpuFacts>(k: &crate::ir::Kernel, gpu: Option<&G>) -> String {
    let cpu = cranelift::Annotations::new(k);
    let mut out = String::from("; layouts: ");
    if let Some(g) = gpu {
        out += &format!("gpu {} | ", g.header());
    }
    out += "cpu cranelift\n";
    for n in gpu.iter().flat_map(|g| g.kernel_notes()) {
        out += &format!("; note: {n}\n");
    }
    out += &crate::ir::print_kernel_annotated(k, &mut |inst| {
        let facts: Vec<String> = [
            gpu.and_then(|g| g.facts(inst)).map(|f| format!("gpu: {f}")),
            cpu.facts(inst).map(|f| format!("cpu: {f}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut lines = vec![];
        if !facts.is_empty() {
            lines.push(facts.join(" | "));
        }
        if let Some(g) = gpu {
            lines.extend(g.notes(inst).into_iter().map(|n| format!("note: {n}")));
        }
        lines
    });
    out
}

//! The NVPTX target machine: optimisation pipeline and PTX emission.

use super::PtxOptions;
use inkwell::module::Module;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::OptimizationLevel;

/// The LLVM target triple of every kernel module.
pub const TRIPLE: &str = "nvptx64-nvidia-cuda";
/// PTX ISA 8.0 (CUDA 12.0) covers everything sm_80 and sm_90 need here.
const FEATURES: &str = "+ptx80";

fn machine(opts: &PtxOptions) -> Result<TargetMachine, String> {
    // Once per process, so that kernels may be compiled on several threads at a time.
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        Target::initialize_nvptx(&InitializationConfig::default());
        // Shared-memory addresses in 32-bit registers (the window is 228 KiB): half the
        // registers and cheaper arithmetic for every `ldmatrix` and `cp.async` address.
        //
        // CodeGenPrepare reruns over the whole function while anything changes, unless the
        // function counts as huge: then, after the first pass, it revisits only the blocks it
        // changed. Guarded per-element accesses make kernels of thousands of small blocks,
        // below LLVM's default threshold of 10000: a bounds-checked one of 9440 spent 7 s
        // there, and 0.3 s in the huge mode, with the same instructions in the PTX.
        let args = [
            c"kiln".as_ptr(),
            c"-nvptx-short-ptr".as_ptr(),
            c"-cgpp-huge-func=1000".as_ptr(),
        ];
        // SAFETY: valid C strings; LLVM copies what it keeps. Runs once, before any target
        // machine exists.
        unsafe {
            inkwell::llvm_sys::support::LLVMParseCommandLineOptions(
                args.len() as i32,
                args.as_ptr(),
                std::ptr::null(),
            )
        };
    });
    let triple = TargetTriple::create(TRIPLE);
    let target = Target::from_triple(&triple).map_err(|e| e.to_string())?;
    target
        .create_target_machine(
            &triple,
            opts.arch.name(),
            FEATURES,
            OptimizationLevel::Aggressive,
            RelocMode::Default,
            CodeModel::Default,
        )
        .ok_or_else(|| "LLVM could not create the NVPTX target machine".to_string())
}

/// Runs LLVM's `-O3` pipeline on the module.
pub fn optimize(module: &Module, opts: &PtxOptions) -> Result<(), String> {
    optimize_with(module, &machine(opts)?)
}

fn optimize_with(module: &Module, tm: &TargetMachine) -> Result<(), String> {
    module.set_triple(&TargetTriple::create(TRIPLE));
    module.set_data_layout(&tm.get_target_data().get_data_layout());
    module
        .verify()
        .map_err(|e| format!("invalid LLVM IR: {e}"))?;
    module
        .run_passes("default<O3>", tm, PassBuilderOptions::create())
        .map_err(|e| e.to_string())
}

/// Optimises the module and returns its PTX.
pub fn emit_ptx(module: &Module, opts: &PtxOptions) -> Result<String, String> {
    let tm = machine(opts)?;
    optimize_with(module, &tm)?;
    let buf = tm
        .write_to_memory_buffer(module, FileType::Assembly)
        .map_err(|e| e.to_string())?;
    String::from_utf8(buf.as_slice().to_vec()).map_err(|e| e.to_string())
}

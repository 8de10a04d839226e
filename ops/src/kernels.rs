//! The shipped kernel sources, embedded at build time so a binary needs no files beside it.

/// One `.kiln` file of `ops/kernels/`.
#[derive(Clone, Copy, Debug)]
pub struct KernelFile {
    /// File name, e.g. `"rmsnorm.kiln"` (used in error messages).
    pub name: &'static str,
    pub source: &'static str,
}

macro_rules! kernel_files {
    ($($name:literal),* $(,)?) => {
        /// Every shipped kernel file.
        pub const ALL: &[KernelFile] = &[
            $(KernelFile { name: $name, source: include_str!(concat!("../kernels/", $name)) }),*
        ];
    };
}

kernel_files!(
    "add.kiln",
    "adamw.kiln",
    "attention.kiln",
    "cross_entropy.kiln",
    "dropout.kiln",
    "embedding.kiln",
    "gemm.kiln",
    "rmsnorm.kiln",
    "rope.kiln",
    "swiglu.kiln",
);

/// The file that defines a kernel, looked up by file name.
pub fn file(name: &str) -> Option<KernelFile> {
    ALL.iter().copied().find(|f| f.name == name)
}

//! Every shipped kernel, run on every available device (the CPU always; a CUDA GPU where one is
//! present) on random inputs with tails, against the f64 references in `reference.rs`.

mod attention;
mod cross_entropy;
mod dot;
mod gradcheck;
mod harness;
mod kernels;
mod reference;
mod typed;

//! Every shipped kernel, run on every available device (the CPU always; a CUDA GPU where one is
//! present) on random inputs with tails, against the f64 references in `reference.rs`.

mod dot;
mod gradcheck;
mod harness;
mod kernels;
mod reference;
mod typed;

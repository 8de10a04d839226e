//! The layers a decoder block is made of, beyond the fused ops of `kiln_ops`.

pub mod linear;
pub mod lora;

//! # kiln-models
//!
//! Language models built from Kiln ops: Hugging Face configs and safetensors weights, Qwen2 and
//! Llama blocks with explicit forward and backward passes, LoRA adapters, the optimizer, sequence
//! packing, data loading and the trainer. (Filled in by the training issues.)

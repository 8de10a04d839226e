#!/usr/bin/env python3
"""peer_hf.py on the Qwen2.5-7B architecture (hidden 3584, 28 layers, 28/4 heads, intermediate
18944, vocab 152,064, untied), for the scale row of `scripts/gpu-check train`: the same peers,
modes and flags (use --mode lora --grad-ckpt for PEFT with gradient checkpointing). peer_hf.py
knows only the 0.5B config, so this replaces it, and builds the model on the GPU in bf16 (as a
CPU f32 model of 7.6B weights it would take minutes to draw); its weights stay random."""
import os
import sys

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_hf  # noqa: E402


def qwen7b_config(layers=None):
    return transformers.Qwen2Config(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944,
        num_hidden_layers=layers or 28, num_attention_heads=28, num_key_value_heads=4,
        max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=False, hidden_act="silu", attention_dropout=0.0,
        use_cache=False,
    )


class OnTheGpu:
    """Qwen2ForCausalLM(config), built on the GPU in bf16."""

    def __new__(cls, config):
        dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            with torch.device("cuda"):
                return transformers.models.qwen2.Qwen2ForCausalLM(config)
        finally:
            torch.set_default_dtype(dtype)


peer_hf.qwen05_config = qwen7b_config
transformers.Qwen2ForCausalLM = OnTheGpu

if __name__ == "__main__":
    peer_hf.main()

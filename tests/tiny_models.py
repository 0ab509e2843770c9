"""Tiny randomly initialised causal LMs of every supported architecture (no download).

Norm weights and biases are randomised: at initialisation they are 1 and 0, which hides bugs
(a missing gain, a dropped bias). Sliding windows are smaller than the test sequences so masks
matter, and Gemma gets attention soft-capping tight enough to bite.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, PreTrainedModel

ARCHITECTURES = (
    "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "gpt2",
    "gpt_oss", "smollm3", "glm4", "granite", "granitemoe", "ministral3", "qwen3_moe", "glm4_moe", "seed_oss",
    "hy_v3", "gemma3", "mistral3",
)
# Multimodal wrappers: the text stack's config sits in ``text_config``; the vision tower is kept tiny.
_WRAPPED_TEXT = {"gemma3": "gemma3_text", "mistral3": "ministral3"}

_COMMON = dict(
    vocab_size=97,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=12,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)

_SPECIFIC: dict[str, dict] = {
    "llama": dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
    "mistral": dict(sliding_window=5),
    "qwen2": dict(
        use_sliding_window=True,
        sliding_window=6,
        max_window_layers=1,
        layer_types=["full_attention", "sliding_attention", "sliding_attention"],
    ),
    "qwen3": dict(attention_bias=True),
    "gemma2": dict(
        sliding_window=5,
        query_pre_attn_scalar=20,
        attn_logit_softcapping=2.0,
        final_logit_softcapping=30.0,
        hidden_activation="gelu_pytorch_tanh",
    ),
    "gemma3_text": dict(
        sliding_window=5,
        query_pre_attn_scalar=20,
        attn_logit_softcapping=3.0,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    ),
    "phi3": dict(sliding_window=6, partial_rotary_factor=0.5),
    "gpt2": dict(n_embd=48, n_layer=3, n_head=4, n_positions=256, n_inner=80, scale_attn_by_inverse_layer_idx=True),
    # learned sink logits (randomised far from zero below), q/k/v/o biases, alternating windows, YaRN
    "gpt_oss": dict(
        attention_bias=True,
        sliding_window=5,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        num_local_experts=4,
        num_experts_per_tok=2,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                         "original_max_position_embeddings": 64, "rope_theta": 10000.0},
    ),
    "smollm3": dict(no_rope_layers=[1, 0, 1], no_rope_layer_interval=2),
    "glm4": dict(attention_bias=True, rope_parameters={"rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                                                       "rope_type": "default"}),
    "granite": dict(residual_multiplier=0.37, attention_multiplier=0.21, embedding_multiplier=3.0),
    "granitemoe": dict(residual_multiplier=0.41, attention_multiplier=0.18, num_local_experts=4,
                       num_experts_per_tok=2),
    # a query scale that grows past original_max_position_embeddings (6 here, so the test sequence crosses it)
    "ministral3": dict(max_position_embeddings=24,
                       rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                        "original_max_position_embeddings": 6, "max_position_embeddings": 24,
                                        "beta_fast": 32.0, "beta_slow": 1.0, "mscale_all_dim": 1.0, "mscale": 1.0,
                                        "llama_4_scaling_beta": 0.8}),
    "qwen3_moe": dict(attention_bias=True, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      decoder_sparse_step=1),
    "glm4_moe": dict(attention_bias=True, use_qk_norm=True, n_routed_experts=4, num_experts_per_tok=2,
                     n_shared_experts=1, moe_intermediate_size=32, first_k_dense_replace=1, n_group=1, topk_group=1,
                     rope_parameters={"rope_theta": 10000.0, "partial_rotary_factor": 0.5, "rope_type": "default"}),
    "seed_oss": dict(attention_bias=True, attention_out_bias=True),
    "hy_v3": dict(num_experts=4, num_experts_per_tok=2, num_shared_experts=1, moe_intermediate_size=32,
                  mlp_layer_types=["dense", "sparse", "sparse"]),
}


def make_config(arch: str, **overrides):
    """A tiny config of architecture ``arch`` (one of ``ARCHITECTURES``)."""
    if arch in _WRAPPED_TEXT:
        text = make_config(_WRAPPED_TEXT[arch]).to_dict()
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      image_size=28, patch_size=14)
        return AutoConfig.for_model(arch, text_config=text, vision_config=vision, **overrides)
    if arch == "gpt2":
        kwargs = dict(vocab_size=97, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    else:
        kwargs = dict(_COMMON)
    kwargs.update(_SPECIFIC[arch])
    kwargs.update(overrides)
    return AutoConfig.for_model(arch, **kwargs)


@torch.no_grad()
def make_tiny_model(
    arch: str,
    *,
    attn_implementation: str = "sdpa",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **overrides,
) -> PreTrainedModel:
    """A tiny causal LM with random weights, random norm gains and random biases, in eval mode.

    ``attn_implementation`` falls back to eager where an architecture has no such path.
    """
    config = make_config(arch, **overrides)
    torch.manual_seed(seed)
    # Mistral 3 is an image-text model only; the others are causal LMs.
    auto = AutoModelForImageTextToText if arch == "mistral3" else AutoModelForCausalLM
    try:
        model = auto.from_config(config, attn_implementation=attn_implementation)
    except ValueError:
        # Some architectures (Gemma 2: soft-capping) have no sdpa path; they run eager.
        model = auto.from_config(config, attn_implementation="eager")
    generator = torch.Generator().manual_seed(seed + 1)
    for name, parameter in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "sinks":  # gpt-oss sink logits: far from zero, so they take a real share of each row
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 1.5 + 1.0)
        elif leaf == "bias" or "norm" in name or ".ln_" in name or name.endswith("ln_f.weight"):
            noise = torch.randn(parameter.shape, generator=generator) * 0.3
            parameter.copy_((parameter + noise).to(parameter.dtype))
        elif parameter.dim() >= 2:
            # Larger weights than the default init: sharper, non-uniform attention.
            parameter.mul_(3.0)
    return model.to(dtype).eval()


def random_ids(length: int, *, seed: int = 0, vocab_size: int = 97) -> torch.Tensor:
    """A 1-D LongTensor of random token ids that avoids the special ids 0–2."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (length,), generator=generator)

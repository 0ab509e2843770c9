"""Tiny randomly initialised causal LMs of every supported architecture (no download).

Norm weights and biases are randomised: at initialisation they are 1 and 0, which hides bugs
(a missing gain, a dropped bias). Sliding windows are smaller than the test sequences so masks
matter, and Gemma gets attention soft-capping tight enough to bite.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "gpt2")

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
}


def make_config(arch: str, **overrides):
    """A tiny config of architecture ``arch`` (one of ``ARCHITECTURES``)."""
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
    try:
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    except ValueError:
        # Some architectures (Gemma 2: soft-capping) have no sdpa path; they run eager.
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    generator = torch.Generator().manual_seed(seed + 1)
    for name, parameter in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "bias" or "norm" in name or ".ln_" in name or name.endswith("ln_f.weight"):
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

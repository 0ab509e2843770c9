"""What each supported model type covers, and why the types spantrace knows of but refuses are refused.

Shown by ``spantrace models`` and used for the refusal message of a known-unsupported type; the full
table, with the test that checks each detail, is docs/architectures.md.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchitectureNote:
    """One supported ``config.model_type``: real checkpoints it covers and the details handled exactly."""

    checkpoints: str
    details: str


LLAMA_LIKE = "RMSNorm pre-norm, rotary, GQA"

NOTES: dict[str, ArchitectureNote] = {
    "llama": ArchitectureNote("Llama 2/3.x, SmolLM/SmolLM2, DeepSeek-R1-Distill-Llama", LLAMA_LIKE + ", rope scaling"),
    "mistral": ArchitectureNote("Mistral 7B, Mistral Small/Nemo (text)", LLAMA_LIKE + ", sliding window"),
    "qwen2": ArchitectureNote("Qwen2/2.5, QwQ, DeepSeek-R1-Distill-Qwen", "q/k/v biases, per-layer sliding windows"),
    "qwen3": ArchitectureNote("Qwen3 dense (0.6B–32B, Thinking)", "per-head q/k RMSNorm, optional biases"),
    "gemma": ArchitectureNote("Gemma 1", "(1 + w) RMSNorm, scaled embeddings"),
    "gemma2": ArchitectureNote("Gemma 2", "sandwich norms (per-sink scale frozen), logit soft-capping, windows"),
    "gemma3_text": ArchitectureNote("Gemma 3 1B, text-only loads", "sandwich norms, q/k norms, per-layer-type rotary"),
    "gemma3": ArchitectureNote(
        "gemma-3-4b/12b/27b-it (image-text)",
        "text stack at model.language_model; images: bidirectional attention inside each image block",
    ),
    "qwen2_5_vl": ArchitectureNote("Qwen2.5-VL 3B/7B/32B/72B (image-text)", "M-RoPE positions read from the model"),
    "qwen3_vl": ArchitectureNote(
        "Qwen3-VL dense, Instruct and Thinking (image-text)", "interleaved M-RoPE, q/k norms, deepstack features"
    ),
    "llava": ArchitectureNote("LLaVA 1.5 (llava-hf, image-text)", "a Llama-shaped text stack; projected patch tokens"),
    "qwen3_vl_moe": ArchitectureNote("Qwen3-VL-30B-A3B, 235B-A22B (image-text)", "as qwen3_vl; MoE MLP"),
    "phi3": ArchitectureNote("Phi-3/3.5, Phi-4 (mini, reasoning)", "fused qkv, partial rotary, sliding window"),
    "gpt2": ArchitectureNote("GPT-2", "LayerNorm, fused Conv1D qkv, learned positions, o bias"),
    "gpt_oss": ArchitectureNote(
        "gpt-oss-20b, gpt-oss-120b",
        "per-head sink logits in every softmax denominator, alternating sliding/full layers, q/k/v/o biases, YaRN",
    ),
    "smollm3": ArchitectureNote("SmolLM3-3B", "no rotary on every 4th layer (no_rope_layers)"),
    "glm4": ArchitectureNote("GLM-4-0414 (9B/32B, Z1 reasoning)", "norm on the attention output, partial rotary"),
    "glm4_moe": ArchitectureNote("GLM-4.5/4.6/4.7, GLM-4.5-Air", "optional q/k norm, partial rotary; MoE MLP"),
    "granite": ArchitectureNote("Granite 3.x dense", "attention_multiplier scale, residual_multiplier folded in W_O"),
    "granitemoe": ArchitectureNote("Granite 3.x MoE", "as granite; MoE MLP"),
    "ministral3": ArchitectureNote("Ministral 3 (text)", "query scale 1 + β·log(1 + ⌊pos / original_max⌋), YaRN"),
    "mistral3": ArchitectureNote("Ministral 3, Magistral, Mistral Small 3.x (image-text)",
                                 "Pixtral's merged patch features, row breaks in the layout; causal text stack"),
    "qwen3_moe": ArchitectureNote("Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder", "as qwen3; MoE MLP"),
    "seed_oss": ArchitectureNote("Seed-OSS-36B", "q/k/v biases, optional o bias"),
    "hy_v3": ArchitectureNote("Hunyuan V3", "MoE MLP"),
    "mixtral": ArchitectureNote("Mixtral 8x7B/8x22B", "sliding window; MoE MLP"),
    "qwen2_moe": ArchitectureNote("Qwen1.5-MoE, Qwen2-57B-A14B", "q/k/v biases; MoE MLP with shared expert"),
    "phimoe": ArchitectureNote("Phi-3.5-MoE", "biases, sliding window; MoE MLP"),
    "ernie4_5": ArchitectureNote("ERNIE-4.5 dense", "biases"),
    "ernie4_5_moe": ArchitectureNote("ERNIE-4.5 MoE (21B-A3B, 300B-A47B)", "biases; MoE MLP"),
    "exaone": ArchitectureNote("EXAONE 3.0/3.5, EXAONE Deep", LLAMA_LIKE),
    "starcoder2": ArchitectureNote("StarCoder2", "LayerNorm with bias, biases, sliding window"),
    "nemotron": ArchitectureNote("Nemotron-4, Minitron", "LayerNorm1P (1 + w, bias), partial rotary"),
    "olmo": ArchitectureNote("OLMo 1", "parameter-free LayerNorm, q/k/v clamped to ±clip_qkv"),
    "hunyuan_v1_dense": ArchitectureNote("Hunyuan dense (e.g. Hunyuan-7B)", "per-head q/k RMSNorm after rotary"),
    "hunyuan_v1_moe": ArchitectureNote("Hunyuan-A13B", "per-head q/k RMSNorm after rotary; MoE MLP"),
    "deepseek_v3": ArchitectureNote(
        "DeepSeek-V3/V3.1, DeepSeek-R1, Kimi K2 (config model_type set to deepseek_v3)",
        "MLA: low-rank normed queries, KV latent with one shared rotated key slice, d_v ≠ d_qk, interleaved "
        "rotary, YaRN mscale² softmax scale; MoE MLP",
    ),
    "gemma4_text": ArchitectureNote(
        "Gemma 4 (E2B/E4B, 26B-A4B MoE, 31B), text-only loads",
        "per-layer head dim and KV heads, scaling 1, scale-free v_norm, keys = values, KV shared across layers, "
        "one-tensor partial rotary per layer type, sandwich norms, layer_scalar outside the attention branch",
    ),
    "gemma4": ArchitectureNote("Gemma 4 instruction/reasoning checkpoints (multimodal wrapper)", "as gemma4_text"),
    "llama4_text": ArchitectureNote(
        "Llama-4-Scout-17B-16E, Llama-4-Maverick-17B-128E (Instruct; the image-text wrapper traces its text LM)",
        "complex interleaved rotary; no rotary every 4th layer, with a query temperature; chunked attention on "
        "rotary layers; L2 q/k norm; MoE MLP",
    ),
    "olmo2": ArchitectureNote(
        "OLMo-2 (1B–32B)", "no pre-attention norm, full-width q/k norm before the head split, norm on attention output"
    ),
    "olmo3": ArchitectureNote("OLMo-3 (7B/32B, Think, Instruct)", "as olmo2, plus sliding layers and per-type rotary"),
    "exaone4": ArchitectureNote(
        "EXAONE-4.0 (1.2B, 32B)", "no pre-attention norm, per-head q/k norm, sliding layers, no rotary on global layers"
    ),
    # hybrids (spantrace/architectures/qwen_hybrid.py; the maths in docs/hybrids.md)
    **{
        qwen: ArchitectureNote(
            checkpoints,
            "3 Gated DeltaNet layers per gated full-attention layer: delta-rule mixing split exactly per source "
            "(keys, β, decays frozen), values through the short conv to their tokens, gated RMSNorm scale frozen; "
            "sigmoid output gate per sink and channel, zero-centred q/k norms, partial rotary",
        )
        for qwen, checkpoints in (
            ("qwen3_5", "Qwen3.5 / Qwen3.6 dense (image-text wrapper; text and images)"),
            ("qwen3_5_text", "Qwen3.5 / Qwen3.6 dense 0.8B–27B, text-only loads"),
            ("qwen3_5_moe", "Qwen3.5-35B-A3B, Qwen3.6 MoE (image-text wrapper; text and images)"),
            ("qwen3_5_moe_text", "Qwen3.5 / Qwen3.6 MoE, text-only loads"),
            ("qwen3_next", "Qwen3-Next-80B-A3B (Instruct, Thinking)"),
        )
    },
    # Mamba-2 hybrids (spantrace/architectures/mamba_hybrid.py, spantrace/layers/mamba2.py)
    "nemotron_h": ArchitectureNote(
        "Nemotron-H (8B/47B/56B), NVIDIA Nemotron Nano 9B/12B v2, Nemotron 3 Nano 30B-A3B",
        "one mixer per block: Mamba-2 blocks split exactly per source (B, C, Δ, decays, conv SiLU ratio and gated "
        "RMSNorm scale frozen; values through the short conv to their tokens, conv bias with the residual) and "
        "rotary-free GQA attention blocks are the layers; MLP / MoE blocks mix no tokens and are not layers",
    ),
    "granitemoehybrid": ArchitectureNote(
        "Granite 4.0-H (Micro, Tiny, Small)",
        "Mamba-2 or attention per layer, residual_multiplier on both branches folded into W_out / W_O, "
        "attention_multiplier scale, NoPE or rotary (position_embedding_type); MoE + shared MLP",
    ),
    "bamba": ArchitectureNote(
        "Bamba-9B (v1, v2)", "Mamba-2 or attention per layer (partial rotary, GQA); Mamba-2 split as nemotron_h"
    ),
    "falcon_h1": ArchitectureNote(
        "Falcon-H1 (0.5B–34B, Base and Instruct)",
        "attention and Mamba-2 in parallel in every layer, split as the union of both sets of heads (x_in once); "
        "attention_in / key / attention_out multipliers, ssm_in / ssm_out multipliers and μP vector, gated "
        "norm before or after the gate or none",
    ),
}

# Types spantrace knows of and refuses, with the reason (a model of such a type gets this in its error).
REFUSED: dict[str, str] = {
    **{
        hybrid: "a hybrid of attention and linear-recurrent (Gated DeltaNet / Mamba-2 / convolution) layers; "
        "exact attribution through these layers is not there yet (the Qwen3.5 / Qwen3-Next hybrids are supported)"
        for hybrid in (
            "jamba", "lfm2", "minimax", "zamba", "zamba2",
        )
    },
    "cohere": "attention and MLP run in parallel on the same input, so there is no residual after attention (x_mid)",
    "cohere2": "attention and MLP run in parallel on the same input, so there is no residual after attention (x_mid)",
    "falcon": "parallel attention and MLP (no x_mid) and ALiBi on some checkpoints",
    "bitnet": "an RMSNorm inside the attention before o_proj (attn_sub_norm) that no adapter handles yet",
    "jetmoe": "a mixture of attention experts routes each token's heads; no adapter handles it yet",
}


def refusal_reason(model_type: str | None) -> str | None:
    """Why spantrace refuses ``model_type``, if it is a known-unsupported type."""
    return REFUSED.get(model_type) if model_type else None

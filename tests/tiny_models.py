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
    "gemma4_text", "gemma4",
    "deepseek_v3",
    "olmo2", "olmo3", "exaone4",
    "llama4_text",  # Llama 4's image-text wrapper ("llama4") is tested in tests/architectures/test_arch_llama4.py
    "mixtral", "qwen2_moe", "phimoe", "ernie4_5", "ernie4_5_moe", "exaone", "starcoder2", "nemotron", "olmo",
    "hunyuan_v1_dense", "hunyuan_v1_moe",
    "gemma",  # Gemma 1: (1 + w) RMSNorm, scaled embeddings, GeGLU; no soft-capping, no windows
)
# Hybrids (attention with Gated DeltaNet / Mamba-2 layers) have their own tiny models and float64 references:
# tests/layers/test_deltanet.py and test_hybrid_qwen.py (Qwen), test_mamba2.py and test_hybrid_mamba.py (Mamba-2).
HYBRID_ARCHITECTURES = (
    "qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text", "qwen3_next",
    "nemotron_h", "granitemoehybrid", "bamba", "falcon_h1",
)
# Multimodal wrappers: the text stack's config sits in ``text_config``; the vision tower is kept tiny.
_WRAPPED_TEXT = {"gemma3": "gemma3_text", "gemma4": "gemma4_text", "mistral3": "ministral3", "llama4": "llama4_text"}

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
    "gemma": dict(hidden_activation="gelu_pytorch_tanh"),
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
    # Llama-shaped types the Llama-style adapter reads as they are (MoE MLPs, LayerNorms, biases)
    "mixtral": dict(sliding_window=6, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=32, qkv_bias=True),
    "phimoe": dict(sliding_window=6, num_local_experts=4, num_experts_per_tok=2, attention_bias=True),
    "ernie4_5": dict(use_bias=True),
    "ernie4_5_moe": dict(use_bias=True, moe_num_experts=4, moe_k=2, moe_intermediate_size=32, moe_layer_start_index=1),
    "exaone": dict(),
    "starcoder2": dict(sliding_window=6, use_bias=True),
    "nemotron": dict(partial_rotary_factor=0.5),
    "olmo": dict(attention_bias=True, clip_qkv=0.9),
    "hunyuan_v1_dense": dict(),
    "hunyuan_v1_moe": dict(num_experts=4, moe_topk=2, moe_intermediate_size=32),
    "hy_v3": dict(num_experts=4, num_experts_per_tok=2, num_shared_experts=1, moe_intermediate_size=32,
                  mlp_layer_types=["dense", "sparse", "sparse"]),
    # Gemma 4: wider full layers with one kv head (16 vs 12, 1 vs 2), k_eq_v on them, v_norm, q/k/v/o biases,
    # windows of 5 < 16, proportional (partial) rotary on full layers; layers 3 and 4 reuse the K/V of layers
    # 2 and 1 (KV sharing); per-layer input embeddings, MoE block, double-wide MLP; layer_scalar randomised below
    "gemma4_text": dict(num_hidden_layers=5, sliding_window=5, attention_bias=True, attention_k_eq_v=True,
                        layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention",
                                     "full_attention"],
                        global_head_dim=16, num_global_key_value_heads=1, num_kv_shared_layers=2,
                        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                         "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.5,
                                                            "rope_theta": 1000.0}},
                        hidden_size_per_layer_input=8, vocab_size_per_layer_input=97, enable_moe_block=True,
                        num_experts=4, top_k_experts=2, moe_intermediate_size=16, use_double_wide_mlp=True,
                        final_logit_softcapping=30.0, use_bidirectional_attention="vision"),
    # MLA: low-rank queries with their own norm, a normed KV latent, one shared rotated key slice, three
    # different head widths (nope 10, rope 6, value 8), interleaved rotary, YaRN with mscale ≠ mscale_all_dim
    # (both the cos/sin factor and the softmax scale move), biases on q_a/kv_a/o, one dense layer then MoE.
    # head_dim is the rotary width qk_rope_head_dim (the config derives it, but _COMMON's 12 would override it);
    # q and k each pass an RMSNorm then one projection, so the default init would leave attention near uniform.
    "deepseek_v3": dict(num_key_value_heads=4, head_dim=6, initializer_range=0.06, q_lora_rank=20, kv_lora_rank=14,
                        qk_nope_head_dim=10, qk_rope_head_dim=6, v_head_dim=8, attention_bias=True,
                        rope_interleave=True, n_routed_experts=4, num_experts_per_tok=2, n_group=2, topk_group=1,
                        n_shared_experts=1, moe_intermediate_size=32, first_k_dense_replace=1,
                        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                                         "mscale": 0.5, "mscale_all_dim": 2.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                         "rope_theta": 10000.0}),
    # OLMo 2/3, EXAONE 4: no norm before attention, q/k norms (full width / per head), a norm on the attention
    # output; OLMo 3 with YaRN on its full layers only; EXAONE 4's full layer skips rotary ("global NoPE")
    "olmo2": dict(attention_bias=True),
    "olmo3": dict(attention_bias=True, sliding_window=5,
                  layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                  rope_parameters={"full_attention": {"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0,
                                                      "beta_slow": 1.0, "original_max_position_embeddings": 64,
                                                      "rope_theta": 10000.0},
                                   "sliding_attention": {"rope_type": "default", "rope_theta": 500000.0}}),
    "exaone4": dict(sliding_window=5, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                    rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
                                     "rope_theta": 1000000.0}),
    # Llama 4: complex (interleaved) llama3 rotary; layers 1 and 3 skip it and get the query temperature, with
    # floor_scale 3 so positions < 16 cross it; rotary layers are chunked (5 < 16) and L2 q/k-normed; q/k/v/o
    # biases; a dense MLP and MoE layers (shared expert + router) interleaved
    "llama4_text": dict(num_hidden_layers=4, no_rope_layers=[1, 0, 1, 0], attention_chunk_size=5, use_qk_norm=True,
                        attn_temperature_tuning=True, floor_scale=3, attn_scale=2.0, attention_bias=True,
                        intermediate_size=32, intermediate_size_mlp=80, num_local_experts=4, num_experts_per_tok=2,
                        interleave_moe_layer_step=2,
                        rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
                                         "rope_theta": 10000.0}),
}


def make_config(arch: str, **overrides):
    """A tiny config of architecture ``arch`` (one of ``ARCHITECTURES``)."""
    if arch in _WRAPPED_TEXT:
        text = make_config(_WRAPPED_TEXT[arch]).to_dict()
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      image_size=28, patch_size=14)
        if arch == "gemma3":  # 256 tokens per image (the default) cannot come out of a 2x2-patch image
            overrides.setdefault("mm_tokens_per_image", 4)
        if arch == "llama4":  # its projector defaults to 4096/7680 wide
            vision.update(vision_output_dim=16, projector_input_dim=16, projector_output_dim=16)
        if arch == "gemma4":  # media token ids default past the tiny vocabulary: use pad's, which they map to anyway
            overrides = dict(image_token_id=0, video_token_id=0, audio_token_id=0, pad_token_id=0, eos_token_id=2,
                             **overrides)
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
    # Mistral 3 is an image-text model only, and Llama 4's wrapper is one; the others are causal LMs.
    auto = AutoModelForImageTextToText if arch in ("mistral3", "llama4") else AutoModelForCausalLM
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
    for name, buffer in model.named_buffers():
        if name.endswith("layer_scalar"):  # Gemma 4: a scale on each layer's output, 1 at initialisation
            buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    return model.to(dtype).eval()


def random_ids(length: int, *, seed: int = 0, vocab_size: int = 97) -> torch.Tensor:
    """A 1-D LongTensor of random token ids that avoids the special ids 0–2."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (length,), generator=generator)


# ----------------------------------------------------------------------------------------------------
# Vision-language models: tiny text AND vision configs, random weights, images as raw pixel inputs
# ----------------------------------------------------------------------------------------------------

VISION_ARCHITECTURES = ("qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "gemma3", "llava")
# Token ids of the image placeholders inside the tiny vocabulary of 97 (ids 0–2 are pad, BOS, EOS).
IMAGE_TOKEN, VISION_START, VISION_END, VIDEO_TOKEN = 90, 91, 92, 93
# Pixtral's row break and image end (Mistral 3): the processor ends each row of image tokens with one of them.
IMAGE_BREAK, IMAGE_END = 94, 95

_QWEN_VISION = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=48, patch_size=4,
                    spatial_merge_size=2, temporal_patch_size=2, in_channels=3)


def make_vision_config(arch: str):
    """A tiny image-text config of ``arch`` (one of ``VISION_ARCHITECTURES``, or ``"mistral3"``)."""
    if arch == "mistral3":  # a Ministral 3 text stack behind a 1-layer Pixtral tower: 4-pixel patches, merged 2x2
        vision = dict(model_type="pixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, head_dim=8, patch_size=4, image_size=64)
        return AutoConfig.for_model("mistral3", text_config=make_config("ministral3").to_dict(), vision_config=vision,
                                    image_token_index=IMAGE_TOKEN, spatial_merge_size=2, tie_word_embeddings=False,
                                    multimodal_projector_bias=True)
    if arch == "llava":  # a Llama text stack behind a 2-layer CLIP tower: 2x2 patches, 4 image tokens
        vision = dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, image_size=28, patch_size=14)
        return AutoConfig.for_model("llava", text_config=make_config("llama").to_dict(), vision_config=vision,
                                    image_token_index=IMAGE_TOKEN, tie_word_embeddings=False)
    if arch == "gemma3":
        return make_config("gemma3", mm_tokens_per_image=4, image_token_index=IMAGE_TOKEN, boi_token_index=VISION_START,
                           eoi_token_index=VISION_END)
    text = dict(_COMMON, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 2]})
    text.pop("tie_word_embeddings")
    vision = dict(_QWEN_VISION)
    if arch == "qwen2_5_vl":
        vision.update(window_size=8, fullatt_block_indexes=[0])
        text.pop("head_dim")
    else:  # Qwen3-VL: interleaved M-RoPE, q/k norms, deepstack features added after the first layer
        vision = dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=48, patch_size=4,
                      spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_position_embeddings=16,
                      deepstack_visual_indexes=[0])
        text["rope_parameters"]["mrope_section"] = [2, 2, 2]
        text["rope_parameters"]["mrope_interleaved"] = True
        if arch == "qwen3_vl_moe":
            text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
    return AutoConfig.for_model(arch, text_config=text, vision_config=vision, image_token_id=IMAGE_TOKEN,
                                video_token_id=VIDEO_TOKEN, vision_start_token_id=VISION_START,
                                vision_end_token_id=VISION_END, tie_word_embeddings=False)


def make_tiny_vlm(arch: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A tiny image-text model with random weights (norm gains and biases randomised too), in eval mode."""
    config = make_vision_config(arch)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, attn_implementation="sdpa")
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias" or "norm" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
            elif not parameter.any():  # zero-initialised (Gemma 3's projector): the image would vanish
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
            elif parameter.dim() >= 2 and "visual" not in name and "vision" not in name:
                parameter.mul_(3.0)
    return model.to(dtype).eval()


def vision_inputs(arch: str, model: PreTrainedModel, *, seed: int = 0, text: int = 6, answer: int = 5):
    """``(input_ids [N], prompt_length, model_inputs)``: ``text`` random tokens, one random image (its markers and
    tokens), ``text`` more tokens, then ``answer`` generated tokens; pixels as the model's forward takes them."""
    generator = torch.Generator().manual_seed(seed)
    before, after = random_ids(text, seed=seed, vocab_size=IMAGE_TOKEN), random_ids(text + answer, seed=seed + 1,
                                                                                   vocab_size=IMAGE_TOKEN)
    if arch == "mistral3":  # 16 x 24 pixels: 2 rows x 3 columns of [IMG], each row ended by [IMG_BREAK] / [IMG_END]
        model_inputs = {"pixel_values": torch.randn(1, 3, 16, 24, generator=generator),
                        "image_sizes": torch.tensor([[16, 24]])}
        image = ([IMAGE_TOKEN] * 3 + [IMAGE_BREAK]) + ([IMAGE_TOKEN] * 3 + [IMAGE_END])
    elif arch in ("gemma3", "llava"):
        vision = model.config.vision_config
        size = int(vision.image_size)
        model_inputs = {"pixel_values": torch.randn(1, 3, size, size, generator=generator)}
        count = int(model.config.mm_tokens_per_image) if arch == "gemma3" else 4
        image = [VISION_START] + [IMAGE_TOKEN] * count + [VISION_END]
    else:
        vision = model.config.vision_config
        grid = torch.tensor([[1, 4, 6]])  # 24 patches, merged 2x2 into 6 image tokens (2 rows x 3 columns)
        width = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        model_inputs = {"pixel_values": torch.randn(int(grid.prod()), width, generator=generator),
                        "image_grid_thw": grid}
        image = [VISION_START] + [IMAGE_TOKEN] * 6 + [VISION_END]
    ids = torch.cat([before, torch.tensor(image), after])
    # 1 at the image tokens, as a processor gives it: Qwen's M-RoPE and Gemma 3's bidirectional mask read it
    types = (ids == IMAGE_TOKEN)[None].long()
    if arch not in ("llava", "mistral3"):
        model_inputs["token_type_ids" if arch == "gemma3" else "mm_token_type_ids"] = types
    dtype = next(model.parameters()).dtype
    model_inputs["pixel_values"] = model_inputs["pixel_values"].to(dtype)
    return ids, ids.shape[0] - answer, model_inputs


# Qwen3.5 / Qwen3.5-MoE image-text wrappers: the hybrid text stack (three Gated DeltaNet layers, then gated full
# attention with M-RoPE) behind a tiny Qwen3.5 vision tower; images as raw pixel inputs, as for Qwen2.5-VL
HYBRID_VISION_ARCHITECTURES = ("qwen3_5", "qwen3_5_moe")
_HYBRID_TEXT = dict(
    vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
    linear_value_head_dim=12, linear_conv_kernel_dim=4, attention_bias=True, pad_token_id=0, bos_token_id=1,
    eos_token_id=2, tie_word_embeddings=False,
    # 12 of the 16 head channels rotate, 2 frequencies per M-RoPE axis: t, h and w all reach the attention
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                     "mrope_section": [2, 2, 2]},
)
_HYBRID_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16)


def make_hybrid_vision_config(arch: str):
    """A tiny Qwen3.5 image-text config of ``arch`` (one of ``HYBRID_VISION_ARCHITECTURES``)."""
    text = AutoConfig.for_model(f"{arch}_text", **_HYBRID_TEXT, **(_HYBRID_MOE if arch.endswith("moe") else {}))
    vision = dict(_QWEN_VISION, depth=2, num_position_embeddings=16)
    return AutoConfig.for_model(arch, text_config=text.to_dict(), vision_config=vision, image_token_id=IMAGE_TOKEN,
                                video_token_id=VIDEO_TOKEN, vision_start_token_id=VISION_START,
                                vision_end_token_id=VISION_END, tie_word_embeddings=False)


@torch.no_grad()
def make_tiny_hybrid_vlm(arch: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A tiny Qwen3.5 image-text model, every detail away from its initial value: norms and biases (text and
    vision), decays spread over (0, 1) (``A_log``, ``dt_bias``), β, decay and attention-gate projections scaled up
    (β and σ(gate) away from 1/2), the other text weights ×3."""
    config = make_hybrid_vision_config(arch)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, attn_implementation="sdpa")
    generator = torch.Generator().manual_seed(seed + 1)
    for name, parameter in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        noise = torch.randn(parameter.shape, generator=generator)
        if leaf == "A_log":  # e^{A_log} in (0.02, 2.7): per-head decays from ~0.99 down to ~0.1
            parameter.copy_(torch.rand(parameter.shape, generator=generator) * 4.5 - 4.0)
        elif leaf in ("dt_bias", "bias") or "norm" in name:
            parameter.add_(noise * 0.3)
        elif parameter.dim() >= 2 and "visual" not in name:
            parameter.mul_(6.0 if any(p in name for p in ("in_proj_b", "in_proj_a", "q_proj")) else 3.0)
    return model.to(dtype).eval()

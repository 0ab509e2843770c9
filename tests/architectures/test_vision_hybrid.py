"""The Qwen3.5 / Qwen3.5-MoE image-text wrappers traced exactly with images (raw pixel inputs, no processor).

Each tiny wrapper (``tiny_models.make_tiny_hybrid_vlm``: three Gated DeltaNet layers, then a gated full-attention
layer with M-RoPE, behind a 2-block vision tower) reads random tokens, one random image (its markers and 6 image
tokens on a 2×3 grid) and an answer. The float64 reference takes nothing from spantrace: every layer's x_in and
x_mid come from the float64 model's own forward with the pixels in, the Gated DeltaNet parts from
``test_deltanet.reference_deltanet`` (explicit transition products), the gated attention parts from the
probabilities the float64 eager attention applied (``test_deltanet.reference_attention``), both run on the image
run; the library's FlashTrace (hops 0–2) and token-wise IFR must match ``reference.trace``, image tokens included.
"""

from __future__ import annotations

import copy
import functools
from unittest import mock

import numpy as np
import pytest
import test_deltanet
import torch
from PIL import Image
from reference import LayerTerms, assert_trace_matches
from test_deltanet import reference_attention, reference_deltanet
from test_hybrid_qwen import ATTENTION_LAYER, hybrid_terms, model_residuals  # three DeltaNet layers, then attention
from tiny_models import (
    HYBRID_VISION_ARCHITECTURES,
    IMAGE_TOKEN,
    make_hybrid_vision_config,
    make_tiny_hybrid_vlm,
    vision_inputs,
)
from torch import nn

import spantrace as st
from spantrace.architectures import qwen_hybrid as hybrid
from spantrace.architectures.vision import image_blocks
from spantrace.errors import SpanTraceError, UnsupportedArchitectureError
from spantrace.selfcheck import capture_errors

RTOL, ATOL = 1e-4, 1e-6


def float64_copy(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model).double()
    if getattr(model.config.get_text_config(), "_experts_implementation", None) not in (None, "eager"):
        model.set_experts_implementation("eager")  # grouped matmuls have no float64 kernel
    return model


def on_image_run(ids: torch.Tensor, model_inputs: dict):
    """``test_deltanet``'s references call ``mixer_io`` on their own text; while inside, it reads the image run."""
    return mock.patch.object(test_deltanet, "mixer_io",
                             functools.partial(test_deltanet.mixer_io, inputs=(ids, model_inputs)))


def as_dtype(model_inputs: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in model_inputs.items()}


@functools.cache
def case(arch: str):
    model = make_tiny_hybrid_vlm(arch)
    ids, prompt_length, model_inputs = vision_inputs(arch, model)
    run = st.load(model).run(input_ids=ids, prompt_length=prompt_length, model_inputs=model_inputs)
    return model, ids, prompt_length, model_inputs, run


@functools.cache
def reference_terms(arch: str) -> list[LayerTerms]:
    """Float64 per-layer terms of the image run: contrib [H, N(sink), N(source), D], residual, x_mid."""
    model, ids, _, model_inputs, _ = case(arch)
    model64 = float64_copy(model)
    x_in, x_mid = model_residuals(model64, (ids, model_inputs))
    with on_image_run(ids, model_inputs):
        return hybrid_terms(x_in, x_mid, lambda index: reference_attention(model64, index),
                            lambda index: reference_deltanet(model64, index))


@pytest.mark.parametrize("arch", HYBRID_VISION_ARCHITECTURES)
def test_loads_with_images_in_the_self_check(arch: str) -> None:
    model, _, _, _, run = case(arch)
    assert type(run.adapter) is hybrid.QwenHybridVisionAdapter
    assert run.model.self_check.max_relative_error <= 1e-5
    assert run.adapter.input_model() is model.model


@pytest.mark.parametrize("arch", HYBRID_VISION_ARCHITECTURES)
def test_reference_rebuilds_the_image_run(arch: str) -> None:
    """Σ parts + residual = the model's own x_mid in every layer, image positions included (the delta-rule kernel
    runs in float32: 1e-6)."""
    for index, terms in enumerate(reference_terms(arch)):
        rebuilt = terms.contrib.sum((0, 2)) + terms.residual
        update = np.abs(terms.x_mid - terms.residual).max()
        assert np.abs(rebuilt - terms.x_mid).max() <= 1e-6 * max(update, 1.0), f"layer {index}"


@pytest.mark.parametrize("method", ["flashtrace", "ifr"])
@pytest.mark.parametrize("arch", HYBRID_VISION_ARCHITECTURES)
def test_trace_with_an_image_matches_the_float64_reference(arch: str, method: str) -> None:
    _, ids, prompt_length, _, run = case(arch)
    terms = reference_terms(arch)
    span = (prompt_length + 1, ids.shape[0] - 1)
    scores = assert_trace_matches(run, terms, span, prompt_length, method=method, rtol=RTOL, atol=ATOL, what=arch)
    (start, end), = image_blocks(ids, run.model.hf_model.config)
    assert scores[start:end].sum() > 0  # the image's tokens are sources like any other


@pytest.mark.parametrize("arch", HYBRID_VISION_ARCHITECTURES)
def test_every_layer_is_rebuilt_from_its_parts_at_the_models_m_rope_positions(arch: str) -> None:
    """The capture keeps the 3-D positions the model used (an image token's h and w rows differ); with them every
    layer's output is rebuilt from its per-source parts, and with 0…N−1 instead the gated attention is not."""
    _, ids, _, _, run = case(arch)
    positions = run.capture.position_ids
    assert positions is not None and positions.shape[0] == 3
    (start, end), = image_blocks(ids, run.model.hf_model.config)
    assert not torch.equal(positions[1, 0, start:end], positions[2, 0, start:end])
    assert max(capture_errors(run.adapter, run.capture)) < 1e-5
    plain = type(run.capture)(**{**run.capture.__dict__, "position_ids": None})
    errors = capture_errors(hybrid.QwenHybridAdapter(run.model.hf_model), plain)
    assert errors[ATTENTION_LAYER] > 1e-2 and max(errors[:ATTENTION_LAYER]) < 1e-5  # DeltaNet reads no positions


def test_the_load_check_runs_the_synthetic_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """An adapter that drops the run's M-RoPE ids (text positions 0…N−1 instead) passes the text check but not the
    synthetic image's: the load is refused naming the gated attention layer."""
    original = hybrid.QwenHybridAdapter._rotary
    monkeypatch.setattr(hybrid.QwenHybridAdapter, "_rotary", lambda self, like, positions=None: original(self, like))
    with pytest.raises(UnsupportedArchitectureError, match=f"layer {ATTENTION_LAYER}") as error:
        st.load(make_tiny_hybrid_vlm("qwen3_5"))
    assert "\n" not in str(error.value)


def test_an_image_in_a_message_is_one_source_on_its_grid(tokenizer) -> None:
    """Through a processor built offline (Qwen's image processor, the built-in tokenizer with the image tokens
    added): the image is one row of ``by("image")``, ``image_map(0)`` is its 2×2 merged grid (row-major, summing to
    its score), and the raw ``input_ids`` + ``model_inputs`` of the same tokens and pixels give the same scores."""
    from test_images_inputs import ImagesOnlyQwen2VLProcessor, template
    from transformers import AutoModelForImageTextToText
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    own = copy.deepcopy(tokenizer)
    marks = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    own.add_special_tokens({"additional_special_tokens": marks})
    side, patch = 16, 4  # 4 × 4 patches, merged 2 × 2: a 2 × 2 grid of image tokens
    images = Qwen2VLImageProcessorPil(min_pixels=side * side, max_pixels=side * side, patch_size=patch, merge_size=2)
    processor = ImagesOnlyQwen2VLProcessor(image_processor=images, tokenizer=own,
                                           chat_template=template("<|vision_start|><|image_pad|><|vision_end|>"))
    config = make_hybrid_vision_config("qwen3_5")
    config.text_config.vocab_size = len(own)
    config.vision_start_token_id, config.vision_end_token_id, config.image_token_id, config.video_token_id = (
        own.convert_tokens_to_ids(marks))
    torch.manual_seed(0)
    model = st.load(AutoModelForImageTextToText.from_config(config).eval(), tokenizer=own, processor=processor)
    pixels = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "image", "image": Image.fromarray(pixels)},
                                             {"type": "text", "text": "What is it?"}]}]
    prepared = model.prepare(messages=messages, output="Noise.")
    result = model.run(prepared=prepared).trace("answer", hops=1)
    (row,) = result.by("image")
    start, end = row.tokens
    assert end - start == 4 and all(result.token_ids[p] == config.image_token_id for p in range(start, end))
    grid = result.image_map(0)
    assert grid.shape == (2, 2) and np.abs(grid).sum() > 0
    np.testing.assert_array_equal(grid.ravel(), result.scores[start:end])
    np.testing.assert_allclose(grid.sum(), row.score, rtol=1e-5)
    ids = prepared.ids + prepared.output_ids
    raw = model.run(input_ids=ids, prompt_length=len(prepared.ids), model_inputs=prepared.model_inputs)
    np.testing.assert_allclose(raw.trace((len(prepared.ids), len(ids)), hops=1).scores, result.scores,
                               rtol=1e-6, atol=1e-9)
    # generated with the image in (the model's own generation, then the capture over prompt and answer)
    generated = model.run(messages=messages, max_new_tokens=3, progress=False)
    assert generated.token_ids[: len(prepared.ids)] == prepared.ids and len(generated.token_ids) > len(prepared.ids)
    (row,) = generated.trace("answer", hops=1).by("image")
    assert np.isfinite(row.score)


def test_a_text_only_run_is_unchanged() -> None:
    """On the wrapper, a text run of the image run's length, traced after it, takes the text stack alone (no
    positions kept, no M-RoPE tables reused): the same scores as a fresh text-only adapter's, bit for bit."""
    model, ids, prompt_length, _, run = case("qwen3_5")
    span = (prompt_length, ids.shape[0])
    run.trace(span, hops=1)  # the image run's tables are built first
    text = torch.where(ids == IMAGE_TOKEN, torch.full_like(ids, 5), ids)
    got = run.model.run(input_ids=text, prompt_length=prompt_length)
    assert got.capture.position_ids is None
    want = st.Model(model, None, check=False)
    want.adapter = hybrid.QwenHybridAdapter(model)
    expected = want.run(input_ids=text, prompt_length=prompt_length)
    np.testing.assert_array_equal(got.trace(span, hops=1).scores, expected.trace(span, hops=1).scores)


def test_a_wrong_image_token_count_is_one_line() -> None:
    model, ids, prompt_length, model_inputs, run = case("qwen3_5")
    fewer = ids.clone()
    fewer[torch.nonzero(fewer == IMAGE_TOKEN)[0]] = 5
    with pytest.raises(st.InputError, match="image tokens") as error:
        run.model.run(input_ids=fewer, prompt_length=prompt_length, model_inputs=model_inputs)
    assert "\n" not in str(error.value)


def test_video_inputs_are_refused_in_one_line() -> None:
    _, ids, prompt_length, model_inputs, run = case("qwen3_5")
    with pytest.raises(SpanTraceError, match="video inputs are not traced") as error:
        run.model.run(input_ids=ids, prompt_length=prompt_length,
                      model_inputs={**model_inputs, "pixel_values_videos": torch.zeros(1)})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("arch", HYBRID_VISION_ARCHITECTURES)
def test_methods_rerun_the_model_as_it_read_the_image(arch: str) -> None:
    """Integrated gradients' f(x) from the merged input embeddings with the captured M-RoPE ids is the model's own
    log-probability of the span with the pixels in; occlusion and grad-input run and score the image."""
    from spantrace.methods.integrated_gradients import integrated_gradients

    model, ids, prompt_length, model_inputs, run = case(arch)
    with torch.no_grad():
        logits = model(input_ids=ids[None], **model_inputs).logits[0].double().log_softmax(-1)
    span = torch.arange(prompt_length, ids.shape[0])
    want = float(logits[span - 1, ids[span]].sum())
    result = integrated_gradients(run, span, torch.ones(span.shape[0]), steps=2)
    assert abs(result.objective_input - want) < 1e-5 * max(1.0, abs(want))  # float32 rounding only
    assert abs(result.objective_baseline - want) > 1e-2  # the baseline differs: the check can fail
    (start, end), = image_blocks(ids, model.config)
    for method in ("occlusion", "grad-input"):
        scores = run.trace((prompt_length, ids.shape[0]), method=method).scores
        assert np.isfinite(scores).all() and np.asarray(scores)[start:end].any(), method


def test_attnlrp_is_refused_in_one_line() -> None:
    _, ids, prompt_length, _, run = case("qwen3_5")
    with pytest.raises(UnsupportedArchitectureError) as error:
        run.trace((prompt_length, ids.shape[0]), method="attnlrp")
    assert "\n" not in str(error.value)

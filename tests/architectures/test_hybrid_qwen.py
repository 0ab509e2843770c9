"""Qwen3.5 / Qwen3-Next hybrids end to end: ``spantrace.load`` and traces against the slow float64 reference.

The reference takes nothing from spantrace: the tiny models and their randomisation are those of
``test_deltanet.py``; every layer's input x_in and its x_mid (the input of the post-attention norm) come from the
float64 Hugging Face model's own forward, read by hooks on its modules; the parts of a Gated DeltaNet layer come
from ``test_deltanet.reference_deltanet`` (projections, conv, decays and β from the module's weights, explicit
products of the per-step transition matrices), those of the gated attention layer from the probabilities the
float64 eager attention applied (``test_deltanet.reference_attention``). They become ``reference.LayerTerms`` and
the library's FlashTrace and token-wise IFR, hops 0–2, both recursive span kinds, are checked against the
reference's ``trace`` — the same comparison ``tests/test_reference.py`` makes for softmax-attention models.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from reference import LayerTerms, trace
from test_deltanet import ids, reference, reference_attention, tiny
from torch import nn

import spantrace
from spantrace.architectures import qwen_hybrid as hybrid
from spantrace.errors import UnsupportedArchitectureError

ARCHS = ("qwen3_next", "qwen3_5_text", "qwen3_5_moe_text")
TRACED = ("qwen3_next", "qwen3_5_text")  # the MoE variant differs only in its MLP, which no trace reads
ATTENTION_LAYER = 3  # three Gated DeltaNet layers, then the gated full-attention layer
PROMPT_LENGTH = 6
SPAN = (9, 12)  # generated tokens 9..11; 12 and 13 come after the span, 6..8 before it
RTOL, ATOL = 1e-4, 1e-6


@torch.no_grad()
def model_residuals(
    model: nn.Module, inputs: tuple[torch.Tensor, dict] | None = None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per decoder layer, from the model's own forward on ``ids()`` (or on ``inputs``: token ids and model inputs,
    an image run): x_in (the layer's input) and x_mid (the input of its post-attention norm, i.e. x_in plus the
    token mixer's output), each [N, D] float64."""
    layers = hybrid.text_stack(model).layers
    x_in: list[np.ndarray | None] = [None] * len(layers)
    x_mid: list[np.ndarray | None] = [None] * len(layers)

    def keep(store: list, index: int):
        def hook(_module, args, kwargs):
            store[index] = (args[0] if args else kwargs["hidden_states"])[0].double().numpy().copy()
        return hook

    handles = []
    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(keep(x_in, index), with_kwargs=True))
        handles.append(layer.post_attention_layernorm.register_forward_pre_hook(keep(x_mid, index),
                                                                                with_kwargs=True))
    try:
        if inputs is None:
            model(ids()[None], use_cache=False)
        else:
            tokens, model_inputs = inputs
            dtype = next(model.parameters()).dtype
            model(input_ids=tokens[None], use_cache=False, **{k: v.to(dtype) if v.is_floating_point() else v
                                                              for k, v in model_inputs.items()})
    finally:
        for handle in handles:
            handle.remove()
    return x_in, x_mid


@functools.cache
def reference_terms(arch: str) -> list[LayerTerms]:
    """Float64 per-layer terms: contrib [H, N(sink), N(source), D], residual [N, D], x_mid [N, D]."""
    x_in, x_mid = model_residuals(tiny(arch, torch.float64))
    # the attention reference makes its own float64 eager copy of the model
    return hybrid_terms(x_in, x_mid, lambda index: reference_attention(tiny(arch), index),
                        lambda index: reference(arch, index))


def hybrid_terms(x_in: list, x_mid: list, attention, deltanet) -> list[LayerTerms]:  # noqa: ANN001
    """The per-layer terms of the hybrid stack from its residuals and each layer's reference parts
    (``attention(index)`` for the gated attention layer, ``deltanet(index)`` for the others)."""
    terms = []
    for index in range(len(x_in)):
        if index == ATTENTION_LAYER:
            ref = attention(index)
            residual = x_in[index] + ref["residual"][None]
        else:
            ref = deltanet(index)
            residual = x_in[index] + ref["residual"]
        contrib = np.ascontiguousarray(ref["parts"].transpose(1, 0, 2, 3))  # [N, H, N, D] -> [H, N, N, D]
        terms.append(LayerTerms(contrib, residual, x_mid[index]))
    return terms


@pytest.mark.parametrize("arch", TRACED)
def test_reference_rebuilds_the_model(arch: str) -> None:
    """Σ parts + residual = the model's own x_mid in every layer (its delta-rule kernel runs in float32: 1e-6)."""
    for index, terms in enumerate(reference_terms(arch)):
        rebuilt = terms.contrib.sum((0, 2)) + terms.residual
        update = np.abs(terms.x_mid - terms.residual).max()
        assert np.abs(rebuilt - terms.x_mid).max() <= 1e-6 * max(update, 1.0), f"layer {index}"


@functools.cache
def library_run(arch: str) -> spantrace.Run:
    return spantrace.load(tiny(arch)).run(input_ids=ids(), prompt_length=PROMPT_LENGTH)


@pytest.mark.parametrize("arch", ARCHS)
def test_loads_with_a_tight_self_check(arch: str) -> None:
    model = spantrace.load(tiny(arch))
    assert model.self_check is not None and model.self_check.max_relative_error <= 1e-5
    kinds = [hybrid.QwenHybridAdapter.layer_kind(model.adapter, i) for i in range(4)]
    assert kinds == ["gated deltanet"] * 3 + ["gated attention"]


@pytest.mark.parametrize("recursive", ["generation", "reasoning"])
@pytest.mark.parametrize("method", ["flashtrace", "ifr"])
@pytest.mark.parametrize("arch", TRACED)
def test_traces_match_the_float64_reference(arch: str, method: str, recursive: str) -> None:
    terms = reference_terms(arch)
    for hops in (0, 1, 2):
        want = trace(terms, SPAN, PROMPT_LENGTH, method=method, hops=hops, recursive=recursive)
        got = library_run(arch).trace(span=SPAN, method=method, hops=hops, recursive=recursive)
        label = f"{arch} {method} hops={hops} {recursive}"
        assert len(got.hop_scores) == len(want.hop_scores), label
        for k, (got_k, want_k) in enumerate(zip(got.hop_scores, want.hop_scores, strict=True)):
            np.testing.assert_allclose(np.asarray(got_k, dtype=np.float64), want_k, rtol=RTOL, atol=ATOL,
                                       err_msg=f"{label}: hop {k}")
        np.testing.assert_allclose(got.rho, want.rho, rtol=RTOL, atol=ATOL, err_msg=f"{label}: rho")
        np.testing.assert_allclose(np.asarray(got.scores, dtype=np.float64), want.scores, rtol=RTOL, atol=ATOL,
                                   err_msg=f"{label}: final scores")


def test_reference_is_not_trivially_satisfied() -> None:
    """The scores spread over many sources and differ between methods and hops (the comparison has teeth)."""
    run = library_run("qwen3_5_text")
    flash = np.asarray(run.trace(span=SPAN, method="flashtrace", hops=1).hop_scores[0])
    ifr = np.asarray(run.trace(span=SPAN, method="ifr", hops=1).hop_scores[0])
    assert (flash[: SPAN[1]] > 1e-3).sum() >= SPAN[1] - 1
    assert np.abs(flash - ifr).max() > 1e-3


def test_a_missed_gate_is_refused_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """An adapter that forgets the attention gate (σ(gate) taken as 1) does not reproduce the layer."""
    from spantrace.layers import gated_attention

    original = gated_attention.GatedAttentionLayer.queries_gates

    def ungated(self, sinks):
        queries, gates = original(self, sinks)
        return queries, torch.ones_like(gates)

    monkeypatch.setattr(gated_attention.GatedAttentionLayer, "queries_gates", ungated)
    with pytest.raises(UnsupportedArchitectureError, match="layer 3"):
        spantrace.load(tiny("qwen3_5_text"))


def test_attention_baselines_skip_the_deltanet_layers() -> None:
    run = library_run("qwen3_5_text")
    result = run.trace(span=SPAN, method="attention-mean", hops=0)
    assert any("gated deltanet" in note for note in result.info["notes"])
    assert np.isfinite(np.asarray(result.scores)).all()


@pytest.mark.parametrize("wrapper", ["qwen3_5", "qwen3_5_moe"])
def test_image_text_wrappers_trace_their_text_stack(wrapper: str) -> None:
    """Qwen3.5 as released is an image-text wrapper: it loads, self-checks and traces text prompts (with images:
    tests/architectures/test_vision_hybrid.py)."""
    from test_deltanet import _COMMON, _MOE, randomise
    from transformers import AutoConfig, AutoModelForImageTextToText

    text = AutoConfig.for_model(f"{wrapper}_text", **_COMMON, **(_MOE if "moe" in wrapper else {})).to_dict()
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=48, patch_size=14)
    config = AutoConfig.for_model(wrapper, text_config=text, vision_config=vision, image_token_id=3,
                                  video_token_id=4, vision_start_token_id=5, vision_end_token_id=6)
    torch.manual_seed(0)
    model = spantrace.load(randomise(AutoModelForImageTextToText.from_config(config)).eval())
    assert model.self_check.max_relative_error <= 1e-5
    scores = model.run(input_ids=ids(), prompt_length=PROMPT_LENGTH).trace(span=SPAN, hops=1).scores
    assert np.isfinite(np.asarray(scores)).all() and np.asarray(scores)[:PROMPT_LENGTH].sum() > 0
    # it takes images (its vision tower found): pixels without their grid are refused in one line
    assert isinstance(model.adapter, hybrid.QwenHybridVisionAdapter)
    with pytest.raises(spantrace.InputError, match="image_grid_thw") as refused:
        model.run(input_ids=ids(), prompt_length=PROMPT_LENGTH, model_inputs={"pixel_values": torch.zeros(4, 8)})
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("method", sorted(spantrace.available_methods()))
def test_every_method_runs_or_refuses_clearly(method: str) -> None:
    run = library_run("qwen3_5_text")
    try:
        result = run.trace(span=SPAN, method=method, hops=0)
    except UnsupportedArchitectureError as error:
        assert method == "attnlrp", f"{method} refused: {error}"
        return
    assert np.isfinite(np.asarray(result.scores)).all()


def test_a_run_keeps_hybrid_layers_only_within_the_cache_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decompositions are kept between traces while they fit HYBRID_CACHE_BYTES; beyond, rebuilt, same scores."""
    from spantrace.layers import dispatch

    kept = spantrace.load(tiny("qwen3_5_text")).run(input_ids=ids(), prompt_length=PROMPT_LENGTH)
    first = kept.trace(span=SPAN, hops=1).scores
    assert len(kept.key_value_cache) == 4
    monkeypatch.setattr(dispatch, "HYBRID_CACHE_BYTES", 0)
    rebuilt = spantrace.load(tiny("qwen3_5_text")).run(input_ids=ids(), prompt_length=PROMPT_LENGTH)
    np.testing.assert_array_equal(rebuilt.trace(span=SPAN, hops=1).scores, first)
    assert len(rebuilt.key_value_cache) == 0

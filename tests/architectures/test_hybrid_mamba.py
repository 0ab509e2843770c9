"""The Mamba-2 hybrids end to end (spantrace/architectures/mamba_hybrid.py): Nemotron-H, Granite 4.0-H, Bamba,
Falcon-H1.

The tiny random models of ``test_mamba2.py`` (every Mamba-2 detail randomised), plus a few variants here: Granite
with rotary and attention biases, Falcon-H1 with attention biases, Nemotron-H with a MoE block and attention
first. Each one

1. loads with ``spantrace.load`` (the self-check rebuilds every layer's x_mid within 1e-5 in float32);
2. traces like the slow float64 reference: per spantrace layer the float64 parts ``[H, N, N, D]``, residual and
   x_mid (nothing from spantrace: x_in and x_mid from hooks on the float64 model's own modules; Mamba-2 layers
   from ``test_mamba2.reference``'s explicit loops over the mixer's weights; softmax-attention layers from the
   probabilities the float64 eager model applied, as ``tests/reference.py`` intercepts them; Falcon-H1 the union
   of both), fed to ``reference.trace``, for FlashTrace and token-wise IFR, hops 0–2, both recursive kinds;
3. is refused when the adapter drops a detail of its family (a multiplier, the rotary, the pre-mixer norm).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from reference import LayerTerms, ReferenceTrace, float64_eager_copy, trace
from test_mamba2 import CONFIGS, tiny
from test_mamba2 import reference as mamba_reference
from test_reference import assert_trace_close
from torch import nn

import spantrace
from spantrace.architectures import mamba_hybrid
from spantrace.architectures.mamba_hybrid import Mamba2HybridAdapter
from spantrace.architectures.registry import adapter_for
from spantrace.errors import UnsupportedArchitectureError
from spantrace.layers.mamba2 import Mamba2Branch

N_TOKENS = 16
PROMPT_LENGTH = 8
SPAN = (11, 14)
HOPS = (0, 1, 2)
SHARPEN = 5.0  # q and k weights ×5: logits ×25

# Variants of test_mamba2's configs (added to its table so that its ``tiny`` builds and randomises them).
_NEMOTRON, _GRANITE, _FALCON = CONFIGS["nemotron_h"][1], CONFIGS["granitemoehybrid"][1], CONFIGS["falcon_h1"][1]
CONFIGS.setdefault("nemotron_h_moe", ("nemotron_h", {
    **_NEMOTRON, "layers_block_type": ["full_attention", "linear_attention", "moe", "linear_attention"],
    "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
    "moe_shared_expert_intermediate_size": 16}))
CONFIGS.setdefault("granitemoehybrid_rope", ("granitemoehybrid", {
    **_GRANITE, "layer_types": ["attention", "mamba"], "position_embedding_type": "rope", "attention_bias": True}))
CONFIGS.setdefault("falcon_h1_bias", ("falcon_h1", {**_FALCON, "attention_bias": True}))
ARCHS = ("nemotron_h", "nemotron_h_moe", "granitemoehybrid", "granitemoehybrid_rope", "bamba", "falcon_h1",
         "falcon_h1_norm_first", "falcon_h1_no_norm", "falcon_h1_bias")


@functools.cache
def sharp(arch: str) -> nn.Module:
    """``test_mamba2.tiny(arch)`` (left as it is) with q/k projections scaled up: at their initial scale the
    attention rows are nearly uniform, which would hide a wrong rotary, key multiplier or scale."""
    model = copy.deepcopy(tiny(arch))
    with torch.no_grad():
        for layer in model.model.layers:
            attention = attention_module(layer)
            if attention is not None:
                attention.q_proj.weight.mul_(SHARPEN)
                attention.k_proj.weight.mul_(SHARPEN)
    return model


def ids() -> torch.Tensor:
    return torch.randint(3, 97, (N_TOKENS,), generator=torch.Generator().manual_seed(11))


# --- the float64 reference ---------------------------------------------------------------------------------------


def token_mixing_blocks(model: nn.Module) -> list[int]:
    """The decoder layers that are spantrace layers: all of them, except Nemotron-H's MLP / MoE blocks."""
    layers = model.model.layers
    return [i for i, layer in enumerate(layers) if getattr(layer, "block_type", None) not in ("mlp", "moe")]


def has_mamba_mixer(layer: nn.Module) -> bool:
    """Whether the Hugging Face layer holds a Mamba-2 mixer (``mamba``, or Nemotron-H's ``mixer``): a module with the
    SSM's own decay parameter and conv window, read from the model, not from spantrace's adapter."""
    mixer = getattr(layer, "mamba", None) or getattr(layer, "mixer", None)
    return hasattr(mixer, "A_log") and hasattr(mixer, "conv1d")


def attention_module(layer: nn.Module) -> nn.Module | None:
    if type(layer).__name__ == "NemotronHBlock":
        return layer.mixer if layer.block_type == "full_attention" else None
    return getattr(layer, "self_attn", None)


@torch.no_grad()
def capture64(model64: nn.Module, input_ids: torch.Tensor) -> dict[int, dict[str, torch.Tensor]]:
    """Per token-mixing block of the float64 eager model: x_in, x_mid and, for attention, alpha and values."""
    blocks = token_mixing_blocks(model64)
    layers = model64.model.layers
    seen: dict[int, dict[str, torch.Tensor]] = {i: {} for i in blocks}
    by_attention = {id(attention_module(layers[i])): seen[i] for i in blocks if attention_module(layers[i])}

    def keep(store: dict, key: str, output: bool = False):
        def hook(module, args, kwargs, *out):
            value = (out[0][0] if isinstance(out[0], tuple) else out[0]) if output else (
                args[0] if args else kwargs["hidden_states"])
            store[key] = value[0].clone()
        return hook

    def intercept(eager):
        def wrapped(module, query, key, value, *args, **kwargs):
            out, probs = eager(module, query, key, value, *args, **kwargs)
            by_attention[id(module)]["alpha"] = probs[0].clone()  # [H, N, N]
            by_attention[id(module)]["values"] = value[0].clone()  # [G, N, d] (V bias in)
            return out, probs
        return wrapped

    handles = []
    for i in blocks:
        layer = layers[i]
        handles.append(layer.register_forward_pre_hook(keep(seen[i], "x_in"), with_kwargs=True))
        kind = type(layer).__name__
        if kind == "NemotronHBlock":  # the block's own output (its residual add included)
            handles.append(layer.register_forward_hook(keep(seen[i], "x_mid", output=True), with_kwargs=True))
        elif kind == "GraniteMoeHybridDecoderLayer":
            mid = layer.post_attention_layernorm
            handles.append(mid.register_forward_pre_hook(keep(seen[i], "x_mid"), with_kwargs=True))
        else:
            mid = layer.pre_ff_layernorm
            handles.append(mid.register_forward_pre_hook(keep(seen[i], "x_mid"), with_kwargs=True))
    modeling = sys.modules[type(layers[0]).__module__]
    eager = modeling.eager_attention_forward
    modeling.eager_attention_forward = intercept(eager)
    try:
        model64(input_ids=input_ids[None], use_cache=False)
    finally:
        modeling.eager_attention_forward = eager
        for handle in handles:
            handle.remove()
    return seen


def attention_terms(layer: nn.Module, store: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention in float64: parts ``[H, N, N, D]`` = α[h, i, j] · v[kv(h), j] W_O^h · scale, and the
    output bias · scale (scale: Granite's residual_multiplier, Falcon-H1's attention_out_multiplier)."""
    kind = type(layer).__name__
    scale = {"GraniteMoeHybridDecoderLayer": getattr(layer, "residual_multiplier", 1.0),
             "FalconH1DecoderLayer": getattr(layer, "attn_out_multiplier", 1.0)}.get(kind, 1.0)
    o_proj = attention_module(layer).o_proj
    alpha, values = store["alpha"].double(), store["values"].double()  # [H, N, N], [G, N, d]
    heads, groups = alpha.shape[0], values.shape[0]
    w_o = o_proj.weight.double().T.reshape(heads, values.shape[-1], -1)  # [H, d, D]
    per_head = values.repeat_interleave(heads // groups, 0)  # [H, N, d]: head h reads kv head h // (H / G)
    head_values = torch.einsum("hjd,hde->hje", per_head, w_o)  # [H, N, D]
    parts = scale * alpha[..., None] * head_values[:, None]  # [H, N(sink), N(source), D]
    bias = scale * o_proj.bias.double() if o_proj.bias is not None else torch.zeros(w_o.shape[-1], dtype=torch.float64)
    return parts, bias


@dataclass(frozen=True)
class Case:
    model: nn.Module
    terms: list[LayerTerms]
    sharpness: float  # the largest attention probability of a sink past position 3 (1/(i+1) if uniform)


@functools.cache
@torch.no_grad()
def case(arch: str) -> Case:
    model = sharp(arch)
    model64 = float64_eager_copy(model)
    captured = capture64(model64, ids())
    terms, sharpness = [], 0.0
    for i in token_mixing_blocks(model64):
        layer, store = model64.model.layers[i], captured[i]
        x_in = store["x_in"]
        pieces, residual = [], x_in.clone()
        if attention_module(layer) is not None:
            parts, bias = attention_terms(layer, store)
            sharpness = max(sharpness, float(store["alpha"][:, 4:].max()))
            pieces.append(parts)
            residual = residual + bias
        if has_mamba_mixer(layer):
            _, parts, with_x_in = mamba_reference(layer, x_in)
            pieces.append(parts)
            residual = residual + (with_x_in - x_in)
        contrib = torch.cat(pieces)  # attention heads, then Mamba heads
        terms.append(LayerTerms(contrib.numpy(), residual.numpy(), store["x_mid"].numpy()))
    return Case(model, terms, sharpness)


@functools.cache
def reference_trace(arch: str, method: str, hops: int, recursive: str) -> ReferenceTrace:
    return trace(case(arch).terms, SPAN, PROMPT_LENGTH, method=method, hops=hops, recursive=recursive)


@functools.cache
def loaded(arch: str) -> spantrace.Model:
    return spantrace.load(sharp(arch))


# --- tests ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_loads_and_self_check_is_tight(arch: str) -> None:
    model = loaded(arch)
    assert isinstance(model.adapter, Mamba2HybridAdapter)
    check = model.self_check
    print(f"{arch}: self-check max relative error {check.max_relative_error:.2e} (layer {check.worst_layer})")
    assert check.max_relative_error <= 1e-5
    kinds = [model.adapter.layer_kind(i) for i in range(model.adapter.num_layers())]
    want = {"nemotron_h": ["mamba2", "attention", "mamba2"], "nemotron_h_moe": ["attention", "mamba2", "mamba2"],
            "granitemoehybrid": ["mamba2", "attention"], "granitemoehybrid_rope": ["attention", "mamba2"],
            "bamba": ["mamba2", "attention"]}.get(arch, ["attention + mamba2"] * 2)
    assert kinds == want
    blocks = [model.adapter.block_index(i) for i in range(model.adapter.num_layers())]
    assert blocks == token_mixing_blocks(model.hf_model)  # Nemotron-H's MLP / MoE blocks are not layers


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_is_complete(arch: str) -> None:
    """Σ parts + residual = x_mid of the float64 model (whose own Mamba-2 scan runs in float32: 1e-5), and the
    attention rows are far from uniform."""
    assert case(arch).sharpness > 0.5
    for terms in case(arch).terms:
        rebuilt = terms.contrib.sum((0, 2)) + terms.residual
        update = np.abs(terms.x_mid - terms.residual).max()
        assert np.abs(rebuilt - terms.x_mid).max() <= 1e-5 * max(update, 1.0)


@pytest.mark.parametrize("arch", ARCHS)
def test_library_matches_reference(arch: str) -> None:
    run = loaded(arch).run(input_ids=ids(), prompt_length=PROMPT_LENGTH)
    assert len(case(arch).terms) == run.capture.num_layers
    for method in ("flashtrace", "ifr"):
        for recursive in ("generation", "reasoning"):
            for hops in HOPS:
                got = run.trace(SPAN, method=method, hops=hops, recursive=recursive)
                want = reference_trace(arch, method, hops, recursive)
                assert_trace_close(got, want, f"{arch} {method} hops={hops} recursive={recursive}")


# --- every detail matters: an adapter without it is refused by the self-check --------------------------------------


def _refused(arch: str) -> None:
    with pytest.raises(UnsupportedArchitectureError, match="does not reproduce layer"):
        spantrace.load(sharp(arch))


@pytest.mark.parametrize("branch", ["attention", "mamba"])
def test_granite_residual_multiplier_matters(monkeypatch: pytest.MonkeyPatch, branch: str) -> None:
    if branch == "attention":
        monkeypatch.setattr(Mamba2HybridAdapter, "_attention_output_scale", lambda self, index: 1.0)
    else:
        original = mamba_hybrid._BRANCHES["GraniteMoeHybridDecoderLayer"]

        def unscaled(layer: nn.Module) -> Mamba2Branch:
            return dataclasses.replace(original(layer), output_scale=1.0)

        monkeypatch.setitem(mamba_hybrid._BRANCHES, "GraniteMoeHybridDecoderLayer", unscaled)
    _refused("granitemoehybrid")


@pytest.mark.parametrize("multiplier", ["key", "attention_in", "attention_out"])
def test_falcon_h1_attention_multipliers_matter(monkeypatch: pytest.MonkeyPatch, multiplier: str) -> None:
    if multiplier == "key":
        keys_values = Mamba2HybridAdapter.keys_values

        def without(self: Mamba2HybridAdapter, index: int, x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            keys, values = keys_values(self, index, x_in)
            return keys / self._attention(index).key_multiplier, values

        monkeypatch.setattr(Mamba2HybridAdapter, "keys_values", without)
    elif multiplier == "attention_in":
        monkeypatch.setattr(Mamba2HybridAdapter, "_attention_input",
                            lambda self, index, x: self._layers[index].input_layernorm(x))
    else:
        monkeypatch.setattr(Mamba2HybridAdapter, "_attention_output_scale", lambda self, index: 1.0)
    _refused("falcon_h1")


@pytest.mark.parametrize("arch", ["bamba", "granitemoehybrid_rope"])
def test_rotary_matters(monkeypatch: pytest.MonkeyPatch, arch: str) -> None:
    monkeypatch.setattr(Mamba2HybridAdapter, "_uses_rotary", lambda self, index: False)
    _refused(arch)


def test_nemotron_h_attention_reads_the_block_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Mamba2HybridAdapter, "_attention_input", lambda self, index, x: x)
    _refused("nemotron_h")


def test_refused_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    nemotron = tiny("nemotron_h")
    monkeypatch.setattr(nemotron.model.layers[2], "block_type", "conv")
    with pytest.raises(UnsupportedArchitectureError, match="unknown block type"):
        adapter_for(nemotron)
    monkeypatch.undo()
    monkeypatch.setattr(tiny("bamba").model.layers[0].mamba, "activation", "relu")
    with pytest.raises(UnsupportedArchitectureError, match="activation is 'relu'"):
        adapter_for(tiny("bamba"))

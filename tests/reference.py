"""A slow, obviously-correct float64 reference for FlashTrace and token-wise IFR (DESIGN.md §1).

Independent of the library's adapters: it runs a float64 copy of the model with eager attention and
intercepts the model's own eager attention function (``eager_attention_forward`` in the modeling
module), which every architecture calls with the value states it multiplies and returns the
probabilities it applied (after masks, windows, soft-capping and sink logits). The output projection
is read from the parameters; everything else is explicit Python loops over layers, heads, sinks and
sources in float64. Speed is not a goal; being easy to check by eye is.

Conventions (the same as the library's):

- The V bias is part of the value state ``v[g, j]`` (the eager function receives it with the bias in),
  so it is attributed to the source token.
- The O bias stays with the residual: the residual vector of sink ``i`` is ``x_in_i + b_O`` (times the
  branch's scale below).
- A norm on the attention output before the residual add (Gemma's sandwich, GLM-4's
  ``post_self_attn_layernorm``), ``a_i · s_i · gain`` with the per-sink scalar
  ``s_i = 1 / sqrt(mean(a_i²) + eps)``, is linear in ``a_i`` once ``s_i`` is fixed, so each head and
  source contribution is scaled by ``s_i · gain``; a residual multiplier (Granite) scales it too.
"""

from __future__ import annotations

import copy
import sys
import types
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# ----------------------------------------------------------------------------------------------------
# The float64 eager model
# ----------------------------------------------------------------------------------------------------


def _rms_gain_kind(module: nn.Module) -> str:
    """How an RMSNorm applies its weight: "none" (no weight), "weight", or "one_plus" (Gemma-style)."""
    weight = getattr(module, "weight", None)
    if weight is None:
        return "none"
    with torch.no_grad():
        probe = torch.ones(1, weight.shape[0], dtype=weight.dtype)
        out = module(probe).double()[0]  # rms(1) = 1, so out ≈ gain
    w = weight.double()
    return "one_plus" if (out - (1 + w)).abs().max() < (out - w).abs().max() else "weight"


def _exact_rms_norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """RMSNorm in the input's own dtype (transformers' RMSNorms compute in float32 whatever the input)."""
    eps = module.variance_epsilon if hasattr(module, "variance_epsilon") else module.eps
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    if module._gain_kind == "none":
        return normed
    gain = module.weight.to(x.dtype)
    return normed * (1.0 + gain if module._gain_kind == "one_plus" else gain)


def float64_eager_copy(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` with eager attention and RMSNorms that really compute in float64.

    The model itself is left untouched. Eager softmax may still run in float32 inside transformers;
    that does not affect the decomposition, which uses the probabilities the model actually applied.
    """
    reference = copy.deepcopy(model).eval()
    kinds = {name: _rms_gain_kind(m) for name, m in reference.named_modules() if type(m).__name__.endswith("RMSNorm")}
    reference = reference.double()
    reference.set_attn_implementation("eager")
    if getattr(reference.config, "_experts_implementation", None) not in (None, "eager"):
        reference.set_experts_implementation("eager")  # grouped matmuls have no float64 kernel
    for name, module in reference.named_modules():
        if name in kinds:
            module._gain_kind = kinds[name]
            module.forward = types.MethodType(_exact_rms_norm, module)
    return reference


# ----------------------------------------------------------------------------------------------------
# Where things live in a layer
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerModules:
    layer: nn.Module  # the decoder layer; its input is x_in
    attn: nn.Module  # the attention module that calls the eager attention function
    mlp_prenorm: nn.Module  # its input is x_mid
    attn_postnorm: nn.Module | None  # a norm on the attention output before the residual add, else None
    out_proj: nn.Module  # the output projection (nn.Linear, or GPT-2's Conv1D)
    branch_scale: float  # a residual multiplier on the attention branch (Granite), else 1


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    if hasattr(model, "transformer"):  # GPT-2
        return list(model.transformer.h)
    base = model.model
    base = getattr(base, "language_model", base)  # multimodal wrappers
    return list(base.layers)


def layer_modules(model: nn.Module) -> list[LayerModules]:
    found = []
    for layer in decoder_layers(model):
        if hasattr(layer, "ln_1"):  # GPT-2
            found.append(LayerModules(layer, layer.attn, layer.ln_2, None, layer.attn.c_proj, 1.0))
            continue
        if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma 2/3: sandwich norms
            mid, post = layer.pre_feedforward_layernorm, layer.post_attention_layernorm
        elif hasattr(layer, "post_self_attn_layernorm"):  # GLM-4
            mid, post = layer.post_attention_layernorm, layer.post_self_attn_layernorm
        elif not hasattr(layer, "input_layernorm") and hasattr(layer, "post_feedforward_layernorm"):
            # OLMo 2/3, EXAONE 4: no norm before attention, one on its output; the MLP reads x_mid unnormed
            mid, post = layer.mlp, layer.post_attention_layernorm
        else:
            mid, post = layer.post_attention_layernorm, None
        scale = float(getattr(layer, "residual_multiplier", 1.0))
        found.append(LayerModules(layer, layer.self_attn, mid, post, layer.self_attn.o_proj, scale))
    return found


def kv_head(h: int, num_heads: int, num_kv_heads: int) -> int:
    """GQA: query head h reads KV head h // (H / G)."""
    return h // (num_heads // num_kv_heads)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def output_weights(parts: LayerModules, num_heads: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Per query head h: W_O^h [d_v, D]; and b_O [D] (zeros where the model has no O bias)."""
    proj = parts.out_proj
    if type(proj).__name__ == "Conv1D":  # GPT-2: y = x @ weight + bias, weight [H*d, D]
        weight = _np(proj.weight)
    else:  # nn.Linear: weight [D, H*d]
        weight = _np(proj.weight).T
    d_v = weight.shape[0] // num_heads
    w_o = [weight[h * d_v : (h + 1) * d_v] for h in range(num_heads)]
    b_o = _np(proj.bias) if proj.bias is not None else np.zeros(weight.shape[1])
    return w_o, b_o


# ----------------------------------------------------------------------------------------------------
# Capture
# ----------------------------------------------------------------------------------------------------


@dataclass
class LayerCapture:
    x_in: torch.Tensor  # [N, D]
    alpha: torch.Tensor  # [H, N, N] attention probabilities the model applied (sink i, source j)
    values: torch.Tensor  # [G, N, d_v] value states the model multiplied (V bias and any v norm in)
    head_out: torch.Tensor  # [N, H, d_v] what the eager function returned
    postnorm_in: torch.Tensor | None  # [N, D] input of the post-attention norm
    x_mid: torch.Tensor  # [N, D]


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@torch.no_grad()
def capture(model64: nn.Module, ids: torch.Tensor, model_inputs: dict | None = None) -> list[LayerCapture]:
    """One forward pass of the float64 eager model on ``ids`` [N], hooks on every layer. ``model_inputs``
    (a vision-language model's pixels, grids, token types) go to the forward as given, floats in float64."""
    modules = layer_modules(model64)
    seen: list[dict[str, torch.Tensor]] = [{} for _ in modules]
    by_attention = {id(parts.attn): store for parts, store in zip(modules, seen, strict=True)}

    def keep_input(store: dict, key: str):
        def hook(_module, args, kwargs):
            store[key] = _first_tensor(args, kwargs)[0].clone()  # [N, D]
        return hook

    def intercept(eager):
        def wrapped(module, query, key, value, *args, **kwargs):
            out, probs = eager(module, query, key, value, *args, **kwargs)
            store = by_attention.get(id(module))
            if store is None:  # a vision tower's attention: not a decoder layer
                return out, probs
            assert probs is not None, "eager attention returned no probabilities"
            store["alpha"] = probs[0].clone()  # [H, N, N]
            store["values"] = value[0].clone()  # [G, N, d_v]
            store["head_out"] = out[0].clone()  # [N, H, d_v]
            return out, probs
        return wrapped

    handles = []
    patched = {}
    for store, parts in zip(seen, modules, strict=True):
        handles += [
            parts.layer.register_forward_pre_hook(keep_input(store, "x_in"), with_kwargs=True),
            parts.mlp_prenorm.register_forward_pre_hook(keep_input(store, "x_mid"), with_kwargs=True),
        ]
        if parts.attn_postnorm is not None:
            handles.append(parts.attn_postnorm.register_forward_pre_hook(keep_input(store, "postnorm_in"),
                                                                         with_kwargs=True))
        modeling = sys.modules[type(parts.attn).__module__]
        if modeling not in patched:
            patched[modeling] = modeling.eager_attention_forward
            modeling.eager_attention_forward = intercept(modeling.eager_attention_forward)
    try:
        device = next(model64.parameters()).device
        extra = {
            k: (v.to(device, torch.float64) if v.is_floating_point() else v.to(device))
            for k, v in (model_inputs or {}).items()
        }
        model64(input_ids=ids[None].to(device), use_cache=False, **extra)
    finally:
        for handle in handles:
            handle.remove()
        for modeling, eager in patched.items():
            modeling.eager_attention_forward = eager
    return [
        LayerCapture(s["x_in"], s["alpha"], s["values"], s["head_out"], s.get("postnorm_in"), s["x_mid"])
        for s in seen
    ]


# ----------------------------------------------------------------------------------------------------
# The exact per-layer decomposition
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerTerms:
    """One layer's attention update split per sink i: x_mid_i = Σ_{h, j} contrib[h, i, j] + residual_i."""

    # [H, N, N, D]; [h, i, j] = head-h contribution of source j to sink i (0 where the model's mask hid j from i:
    # every j > i of a causal row; a row inside a bidirectional image block sees the later tokens of its block)
    contrib: np.ndarray
    residual: np.ndarray  # [N, D]
    x_mid: np.ndarray  # [N, D]


def _norm_gain(norm: nn.Module) -> np.ndarray:
    kind = getattr(norm, "_gain_kind", "weight")
    if kind == "none":
        return np.ones(norm.normalized_shape if hasattr(norm, "normalized_shape") else 1)
    weight = _np(norm.weight)
    return 1.0 + weight if kind == "one_plus" else weight


@torch.no_grad()
def layer_terms(parts: LayerModules, cap: LayerCapture) -> LayerTerms:
    alpha = _np(cap.alpha)  # [H, N, N]
    values = _np(cap.values)  # [G, N, d_v]
    H, N, _ = alpha.shape
    G = values.shape[0]
    x_in = _np(cap.x_in)  # [N, D]
    w_o, b_o = output_weights(parts, H)

    # The eager function's own output is Σ_j α[h, i, j] · values[kv(h), j]: check the capture first.
    head_out = _np(cap.head_out)  # [N, H, d_v]
    for h in range(H):
        g = kv_head(h, H, G)
        for i in range(N):
            rebuilt = sum(alpha[h, i, j] * values[g, j] for j in range(N))
            assert np.allclose(rebuilt, head_out[i, h], rtol=1e-9, atol=1e-9), "eager capture is inconsistent"

    # v[h, j] = values[kv(h), j] · W_O^h
    D = w_o[0].shape[1]
    v = np.zeros((H, N, D))  # [H, N, D]
    for h in range(H):
        g = kv_head(h, H, G)
        for j in range(N):
            v[h, j] = values[g, j] @ w_o[h]

    # The linear map applied to the attention output before it joins the residual, per sink:
    # u -> branch_scale · s_i · gain ⊙ u (s_i = 1 and gain = 1 without a post-attention norm).
    sink_scale = np.full(N, parts.branch_scale)  # [N]
    gain = np.ones(D)  # [D]
    if parts.attn_postnorm is not None:
        norm = parts.attn_postnorm
        eps = norm.variance_epsilon if hasattr(norm, "variance_epsilon") else norm.eps
        gain = _norm_gain(norm)
        attn_out = _np(cap.postnorm_in)
        for i in range(N):
            sink_scale[i] *= 1.0 / np.sqrt(np.mean(attn_out[i] ** 2) + eps)

    contrib = np.zeros((H, N, N, D))  # [H, N, N, D]
    residual = np.zeros((N, D))  # [N, D]
    for i in range(N):
        residual[i] = x_in[i] + sink_scale[i] * gain * b_o
        for h in range(H):
            for j in range(N):  # α is 0 wherever the mask hid j from i
                contrib[h, i, j] = alpha[h, i, j] * sink_scale[i] * gain * v[h, j]
    return LayerTerms(contrib, residual, _np(cap.x_mid))


def reference_terms(model: nn.Module, ids: torch.Tensor, model_inputs: dict | None = None) -> list[LayerTerms]:
    """The exact float64 decomposition of every layer of ``model`` on ``ids`` [N] (model left untouched)."""
    model64 = float64_eager_copy(model)
    captures = capture(model64, ids, model_inputs)
    return [layer_terms(parts, cap) for parts, cap in zip(layer_modules(model64), captures, strict=True)]


def decomposition_error(terms: list[LayerTerms]) -> float:
    """max over layers and sinks of |Σ_{h, j≤i} contrib + residual − x_mid|, relative to max |x_mid|."""
    worst = 0.0
    for t in terms:
        H, N = t.contrib.shape[0], t.contrib.shape[1]
        scale = max(1.0, float(np.abs(t.x_mid).max()))
        for i in range(N):
            total = t.residual[i].copy()  # [D]
            for h in range(H):
                for j in range(N):
                    total += t.contrib[h, i, j]
            worst = max(worst, float(np.abs(total - t.x_mid[i]).max()) / scale)
    return worst


# ----------------------------------------------------------------------------------------------------
# Attribution
# ----------------------------------------------------------------------------------------------------


def prox(z: np.ndarray, y: np.ndarray) -> float:
    """Proximity of a part z to the whole y: max(0, |y|_1 − |y − z|_1)."""
    return max(0.0, float(np.abs(y).sum() - np.abs(y - z).sum()))


def ifr_row(terms: list[LayerTerms], i: int) -> np.ndarray:
    """Token-wise IFR of sink i: row_i(j) = Σ_l e[l, j→i], for every source j (0 for j > i)."""
    H, N = terms[0].contrib.shape[0], terms[0].contrib.shape[1]
    row = np.zeros(N)  # [N]
    for t in terms:
        y = t.x_mid[i]  # [D]
        p = np.zeros(N)  # [N], Σ_h p[h, j→i]
        for j in range(N):
            for h in range(H):
                p[j] += prox(t.contrib[h, i, j], y)
        denominator = p.sum() + prox(t.residual[i], y)
        if denominator > 0:
            row += p / denominator
    return row


def ifr_scores(terms: list[LayerTerms], weights: np.ndarray) -> np.ndarray:
    """Token-wise IFR of a weighted sink set: Σ_i w_i row_i / Σ_i w_i (weights [N], 0 off the set)."""
    N = weights.shape[0]
    total = np.zeros(N)  # [N]
    for i in range(N):
        if weights[i] != 0:
            total += weights[i] * ifr_row(terms, i)
    mass = weights.sum()
    return total / mass if mass > 0 else total


def flashtrace_scores(terms: list[LayerTerms], weights: np.ndarray) -> np.ndarray:
    """FlashTrace: IFR of the aggregated target Y = Σ_i w_i x_mid_i (weights [N], 0 off the sink set)."""
    H, N = terms[0].contrib.shape[0], terms[0].contrib.shape[1]
    scores = np.zeros(N)  # [N]
    for t in terms:
        y = np.zeros_like(t.x_mid[0])  # [D]
        r = np.zeros_like(t.x_mid[0])  # [D]
        z = np.zeros((H, N) + t.x_mid[0].shape)  # [H, N, D]
        for i in range(N):
            y += weights[i] * t.x_mid[i]
            r += weights[i] * t.residual[i]
            for h in range(H):
                for j in range(N):
                    z[h, j] += weights[i] * t.contrib[h, i, j]
        p = np.zeros(N)  # [N], Σ_h p[h, j→S]
        for j in range(N):
            for h in range(H):
                p[j] += prox(z[h, j], y)
        denominator = p.sum() + prox(r, y)
        if denominator > 0:
            scores += p / denominator
    return scores


METHODS = {"flashtrace": flashtrace_scores, "ifr": ifr_scores}


@dataclass(frozen=True)
class ReferenceTrace:
    scores: np.ndarray  # [N] final: m ⊙ s⁰ + Σ_k ρ_{k−1} · m ⊙ s^k
    hop_scores: list[np.ndarray]  # K + 1 raw arrays [N], hop 0 first
    rho: list[float]  # ρ_0 .. ρ_K


def recursive_span(span: tuple[int, int], prompt_length: int, recursive: str) -> range:
    """The generated part of G: T ∪ O for "generation" and "assistant" (which adds earlier turns), T for
    "reasoning"."""
    a, b = span
    if recursive in ("generation", "assistant"):
        return range(prompt_length, b)
    if recursive == "reasoning":
        return range(prompt_length, a)
    raise ValueError(f"recursive must be 'generation', 'reasoning' or 'assistant', not {recursive!r}")


def _share_in(scores: np.ndarray, positions: range | list[int]) -> float:
    """Σ_G s / Σ_all s (0 when there is no mass at all)."""
    total = float(scores.sum())
    return float(scores[list(positions)].sum()) / total if total > 0 else 0.0


def trace(
    terms: list[LayerTerms],
    span: tuple[int, int],
    prompt_length: int,
    *,
    method: str = "flashtrace",
    hops: int = 1,
    recursive: str = "generation",
    earlier_turns: tuple[int, ...] = (),
) -> ReferenceTrace:
    """Recursive multi-hop attribution of ``span`` = (a, b), end exclusive, back to the prompt.

    ``recursive="assistant"``: ``earlier_turns`` (prompt positions of earlier assistant turns) join G, and get
    no final score (m = 0 there, as on the generation)."""
    score_fn = METHODS[method]
    a, b = span
    N = terms[0].x_mid.shape[0]
    group = list(recursive_span(span, prompt_length, recursive))  # the positions of G, ascending
    if recursive == "assistant":
        group = sorted(set(group) | {p for p in earlier_turns if p < prompt_length})

    weights = np.zeros(N)  # [N] hop 0: the span itself, unit weights
    weights[a:b] = 1.0
    hop_scores = [score_fn(terms, weights)]
    rho = [_share_in(hop_scores[0], group)]
    for _ in range(1, hops + 1):
        previous = hop_scores[-1]
        weights = np.zeros(N)  # [N] hop k: the recursive span weighted by the previous hop's scores
        mass = float(previous[group].sum())
        if mass > 0:
            weights[group] = previous[group] / mass
        hop_scores.append(score_fn(terms, weights))
        rho.append(rho[-1] * _share_in(hop_scores[-1], group))

    mask = np.zeros(N)  # [N] 1 on the prompt
    mask[:prompt_length] = 1.0
    mask[group] = 0.0  # G is unobserved: the generation, and earlier assistant turns in "assistant" mode
    final = mask * hop_scores[0]
    for k in range(1, hops + 1):
        final = final + rho[k - 1] * mask * hop_scores[k]
    return ReferenceTrace(final, hop_scores, rho)


def assert_trace_matches(run, terms: list[LayerTerms], span: tuple[int, int], prompt_length: int, *, method: str,
                         rtol: float, atol: float, what: str = "") -> np.ndarray:
    """``run.trace(span)`` with hops 0, 1 and 2 equals ``trace`` of the reference ``terms``, hop by hop and
    combined; returns the last combined scores (hops 2) for further checks."""
    for hops in (0, 1, 2):
        got = run.trace(span, method=method, hops=hops)
        want = trace(terms, span, prompt_length, method=method, hops=hops)
        for k, (a, b) in enumerate(zip(got.hop_scores, want.hop_scores, strict=True)):
            np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=rtol, atol=atol,
                                       err_msg=f"{what} {method} hops={hops}: hop {k}")
        np.testing.assert_allclose(np.asarray(got.scores, np.float64), want.scores, rtol=rtol, atol=atol)
    return np.asarray(got.scores)

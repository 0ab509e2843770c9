"""A slow, obviously-correct float64 reference for FlashTrace and token-wise IFR (DESIGN.md §1).

Independent of the library: it reads attention probabilities straight out of the model's own eager
attention (a forward hook on each self-attention module), reads the value/output weights straight
out of the parameters, and computes everything with explicit Python loops over layers, heads, sinks
and sources in float64. Speed is not a goal; being easy to check by eye is.

Conventions (the same as the library's):

- The V bias is part of the value vector ``v[h, j]``, so it is attributed to the source token
  (attention rows sum to one, so ``Σ_j α[h, i, j] · b_V`` is exactly the bias's share of the output).
- The O bias stays with the residual: the residual vector of sink ``i`` is ``x_in_i + b_O``.
- Gemma's sandwich norm after attention, ``postnorm(a_i) = a_i · s_i · (1 + γ')`` with the per-sink
  scalar ``s_i = 1 / sqrt(mean(a_i²) + eps)``, is linear in ``a_i`` once ``s_i`` is fixed, so each head
  and source contribution is scaled by ``s_i · (1 + γ')`` (and an O bias, if any, likewise).
"""

from __future__ import annotations

import copy
import types
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

SANDWICH_FAMILIES = ("gemma2", "gemma3_text")
SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gpt2", *SANDWICH_FAMILIES)


# ----------------------------------------------------------------------------------------------------
# The float64 eager model
# ----------------------------------------------------------------------------------------------------


def _exact_rms_norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """RMSNorm in the input's own dtype (transformers' RMSNorms compute in float32 whatever the input)."""
    eps = module.variance_epsilon if hasattr(module, "variance_epsilon") else module.eps
    gain = module.weight.to(x.dtype)
    if type(module).__name__.startswith("Gemma"):
        gain = 1.0 + gain  # Gemma stores γ - 1
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain


def float64_eager_copy(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` with eager attention and RMSNorms that really compute in float64.

    The model itself is left untouched. Eager softmax still runs in float32 inside transformers
    (``softmax(..., dtype=float32)``); that does not affect the decomposition, which uses the
    probabilities the model actually applied.
    """
    reference = copy.deepcopy(model).double().eval()
    reference.set_attn_implementation("eager")
    for module in reference.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = types.MethodType(_exact_rms_norm, module)
    return reference


# ----------------------------------------------------------------------------------------------------
# Where things live in each family
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerModules:
    attn: nn.Module  # the self-attention module; eager forward returns (output [1, N, D], probs [1, H, N, N])
    input_norm: nn.Module  # its input is x_in
    mlp_prenorm: nn.Module  # its input is x_mid
    attn_postnorm: nn.Module | None  # Gemma's sandwich norm on the attention output, else None


def family(model: nn.Module) -> str:
    model_type = model.config.model_type
    if model_type not in SUPPORTED_FAMILIES:
        raise ValueError(f"reference: unsupported architecture {model_type!r}")
    return model_type


def layer_modules(model: nn.Module) -> list[LayerModules]:
    arch = family(model)
    if arch == "gpt2":
        return [LayerModules(block.attn, block.ln_1, block.ln_2, None) for block in model.transformer.h]
    if arch in SANDWICH_FAMILIES:
        return [
            LayerModules(layer.self_attn, layer.input_layernorm, layer.pre_feedforward_layernorm,
                         layer.post_attention_layernorm)
            for layer in model.model.layers
        ]
    return [
        LayerModules(layer.self_attn, layer.input_layernorm, layer.post_attention_layernorm, None)
        for layer in model.model.layers
    ]


@dataclass(frozen=True)
class HeadShape:
    num_heads: int  # H query heads
    num_kv_heads: int  # G key/value heads
    head_dim: int  # d
    hidden: int  # D

    def kv_head(self, h: int) -> int:
        """GQA: query head h reads KV head h // (H / G)."""
        return h // (self.num_heads // self.num_kv_heads)


def head_shape(model: nn.Module, attn: nn.Module) -> HeadShape:
    config = model.config
    num_heads = config.num_attention_heads
    num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
    return HeadShape(num_heads, num_kv_heads, attn.head_dim, config.hidden_size)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def value_weights(arch: str, attn: nn.Module, shape: HeadShape) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per KV head g: W_V^g [D, d] and b_V^g [d] (zeros where the model has no V bias)."""
    H, G, d, D = shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.hidden
    w_v: list[np.ndarray] = []
    b_v: list[np.ndarray] = []
    for g in range(G):
        if arch == "gpt2":
            # Conv1D: y = x @ weight + bias, weight [D, 3D]; c_attn(x).split(D) gives q, k, v -> v is [2D:3D].
            cols = slice(2 * D + g * d, 2 * D + (g + 1) * d)
            w_v.append(_np(attn.c_attn.weight[:, cols]))  # [D, d]
            b_v.append(_np(attn.c_attn.bias[cols]))  # [d]
            continue
        if arch == "phi3":
            # Fused Linear: weight [H*d + 2*G*d, D], rows are q (H*d), k (G*d), v (G*d).
            proj = attn.qkv_proj
            start = H * d + G * d
        else:
            proj = attn.v_proj  # Linear: weight [G*d, D]
            start = 0
        rows = slice(start + g * d, start + (g + 1) * d)
        w_v.append(_np(proj.weight[rows, :]).T)  # [D, d]
        b_v.append(_np(proj.bias[rows]) if proj.bias is not None else np.zeros(d))  # [d]
    return w_v, b_v


def output_weights(arch: str, attn: nn.Module, shape: HeadShape) -> tuple[list[np.ndarray], np.ndarray]:
    """Per query head h: W_O^h [d, D]; and b_O [D] (zeros where the model has no O bias)."""
    H, d, D = shape.num_heads, shape.head_dim, shape.hidden
    w_o: list[np.ndarray] = []
    for h in range(H):
        cols = slice(h * d, (h + 1) * d)
        if arch == "gpt2":
            w_o.append(_np(attn.c_proj.weight[cols, :]))  # Conv1D weight [H*d, D] -> [d, D]
        else:
            w_o.append(_np(attn.o_proj.weight[:, cols]).T)  # Linear weight [D, H*d] -> [d, D]
    proj = attn.c_proj if arch == "gpt2" else attn.o_proj
    b_o = _np(proj.bias) if proj.bias is not None else np.zeros(D)  # [D]
    return w_o, b_o


# ----------------------------------------------------------------------------------------------------
# Capture
# ----------------------------------------------------------------------------------------------------


@dataclass
class LayerCapture:
    x_in: torch.Tensor  # [N, D]
    alpha: torch.Tensor  # [H, N, N] attention probabilities (sink i, source j)
    attn_out: torch.Tensor  # [N, D] attention module output (o_proj / c_proj, bias included)
    x_mid: torch.Tensor  # [N, D]


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@torch.no_grad()
def capture(model64: nn.Module, ids: torch.Tensor) -> list[LayerCapture]:
    """One forward pass of the float64 eager model on ``ids`` [N], hooks on every layer."""
    modules = layer_modules(model64)
    seen: list[dict[str, torch.Tensor]] = [{} for _ in modules]
    handles = []

    def keep_input(store: dict, key: str):
        def hook(_module, args, kwargs):
            store[key] = _first_tensor(args, kwargs)[0].clone()  # [N, D]
        return hook

    def keep_attention(store: dict):
        def hook(_module, _args, _kwargs, output):
            out, probs = output[0], output[1]
            assert probs is not None, "eager attention returned no probabilities"
            store["attn_out"] = out[0].clone()  # [N, D]
            store["alpha"] = probs[0].clone()  # [H, N, N]
        return hook

    for store, parts in zip(seen, modules, strict=True):
        handles += [
            parts.input_norm.register_forward_pre_hook(keep_input(store, "x_in"), with_kwargs=True),
            parts.mlp_prenorm.register_forward_pre_hook(keep_input(store, "x_mid"), with_kwargs=True),
            parts.attn.register_forward_hook(keep_attention(store), with_kwargs=True),
        ]
    try:
        model64(input_ids=ids[None].to(next(model64.parameters()).device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return [LayerCapture(s["x_in"], s["alpha"], s["attn_out"], s["x_mid"]) for s in seen]


# ----------------------------------------------------------------------------------------------------
# The exact per-layer decomposition
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerTerms:
    """One layer's attention update split per sink i: x_mid_i = Σ_{h, j≤i} contrib[h, i, j] + residual_i."""

    contrib: np.ndarray  # [H, N, N, D]; [h, i, j] = head-h contribution of source j to sink i (0 if j > i)
    residual: np.ndarray  # [N, D]
    x_mid: np.ndarray  # [N, D]


@torch.no_grad()
def layer_terms(arch: str, parts: LayerModules, shape: HeadShape, cap: LayerCapture) -> LayerTerms:
    H, D = shape.num_heads, shape.hidden
    N = cap.x_in.shape[0]
    normed = _np(parts.input_norm(cap.x_in))  # [N, D], the layer's own input norm
    alpha = _np(cap.alpha)  # [H, N, N]
    attn_out = _np(cap.attn_out)  # [N, D]
    x_in = _np(cap.x_in)  # [N, D]
    w_v, b_v = value_weights(arch, parts.attn, shape)
    w_o, b_o = output_weights(arch, parts.attn, shape)

    # v[h, j] = (norm(x_in)_j · W_V^{kv(h)} + b_V^{kv(h)}) · W_O^h
    v = np.zeros((H, N, D))  # [H, N, D]
    for h in range(H):
        g = shape.kv_head(h)
        for j in range(N):
            v[h, j] = (normed[j] @ w_v[g] + b_v[g]) @ w_o[h]

    # The linear map applied to the attention output before it joins the residual, per sink:
    # identity, or Gemma's postnorm with its scalar s_i frozen: u -> s_i * (1 + γ') ⊙ u.
    sink_scale = np.ones(N)  # [N]
    gain = np.ones(D)  # [D]
    if parts.attn_postnorm is not None:
        eps = parts.attn_postnorm.eps
        gain = 1.0 + _np(parts.attn_postnorm.weight)
        for i in range(N):
            sink_scale[i] = 1.0 / np.sqrt(np.mean(attn_out[i] ** 2) + eps)

    contrib = np.zeros((H, N, N, D))  # [H, N, N, D]
    residual = np.zeros((N, D))  # [N, D]
    for i in range(N):
        residual[i] = x_in[i] + sink_scale[i] * gain * b_o
        for h in range(H):
            for j in range(i + 1):
                contrib[h, i, j] = alpha[h, i, j] * sink_scale[i] * gain * v[h, j]
    return LayerTerms(contrib, residual, _np(cap.x_mid))


def reference_terms(model: nn.Module, ids: torch.Tensor) -> list[LayerTerms]:
    """The exact float64 decomposition of every layer of ``model`` on ``ids`` [N] (model left untouched)."""
    model64 = float64_eager_copy(model)
    arch = family(model64)
    captures = capture(model64, ids)
    terms = []
    for parts, cap in zip(layer_modules(model64), captures, strict=True):
        terms.append(layer_terms(arch, parts, head_shape(model64, parts.attn), cap))
    return terms


def decomposition_error(terms: list[LayerTerms]) -> float:
    """max over layers and sinks of |Σ_{h, j≤i} contrib + residual − x_mid|, relative to max |x_mid|."""
    worst = 0.0
    for t in terms:
        H, N = t.contrib.shape[0], t.contrib.shape[1]
        scale = max(1.0, float(np.abs(t.x_mid).max()))
        for i in range(N):
            total = t.residual[i].copy()  # [D]
            for h in range(H):
                for j in range(i + 1):
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
        for j in range(i + 1):
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
                for j in range(i + 1):
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
    a, b = span
    if recursive == "generation":
        return range(prompt_length, b)
    if recursive == "reasoning":
        return range(prompt_length, a)
    raise ValueError(f"recursive must be 'generation' or 'reasoning', not {recursive!r}")


def _share_in(scores: np.ndarray, positions: range) -> float:
    """Σ_G s / Σ_all s (0 when there is no mass at all)."""
    total = float(scores.sum())
    return float(scores[positions.start:positions.stop].sum()) / total if total > 0 else 0.0


def trace(
    terms: list[LayerTerms],
    span: tuple[int, int],
    prompt_length: int,
    *,
    method: str = "flashtrace",
    hops: int = 1,
    recursive: str = "generation",
) -> ReferenceTrace:
    """Recursive multi-hop attribution of ``span`` = (a, b), end exclusive, back to the prompt."""
    score_fn = METHODS[method]
    a, b = span
    N = terms[0].x_mid.shape[0]
    group = recursive_span(span, prompt_length, recursive)

    weights = np.zeros(N)  # [N] hop 0: the span itself, unit weights
    weights[a:b] = 1.0
    hop_scores = [score_fn(terms, weights)]
    rho = [_share_in(hop_scores[0], group)]
    for _ in range(1, hops + 1):
        previous = hop_scores[-1]
        weights = np.zeros(N)  # [N] hop k: the recursive span weighted by the previous hop's scores
        mass = float(previous[group.start:group.stop].sum())
        if mass > 0:
            weights[group.start:group.stop] = previous[group.start:group.stop] / mass
        hop_scores.append(score_fn(terms, weights))
        rho.append(rho[-1] * _share_in(hop_scores[-1], group))

    mask = np.zeros(N)  # [N] 1 on the prompt
    mask[:prompt_length] = 1.0
    final = mask * hop_scores[0]
    for k in range(1, hops + 1):
        final = final + rho[k - 1] * mask * hop_scores[k]
    return ReferenceTrace(final, hop_scores, rho)

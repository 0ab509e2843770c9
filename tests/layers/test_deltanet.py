"""Qwen3-Next / Qwen3.5 hybrid layers (spantrace/layers/deltanet.py, spantrace/layers/gated_attention.py).

Tiny random models of each type, 4 layers (three Gated DeltaNet layers, then one gated full-attention
layer), every detail away from its initial value: norms (the zero-centred ones and the gated output
norm), attention biases, ``A_log`` and ``dt_bias`` (decays spread over (0, 1)), the β and gate
projections scaled up (β and σ(gate) spread away from 1/2), conv weights ×3. Each layer is checked two
ways: (1) its parts plus residual rebuild the model's own x_mid (float32 and float64), as the load-time
self-check measures it on what ``capture_residuals`` kept and the adapter built; (2) a slow float64
reference that builds the per-head N×N mixing matrix from explicit products of transition matrices
(DeltaNet) or takes the probabilities the model's eager attention applied (gated attention) agrees with
``rows``, ``token_parts`` and ``span_values`` for random sink weights.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from spantrace.architectures.qwen_hybrid import QwenHybridAdapter, text_stack
from spantrace.capture import Capture, capture_residuals
from spantrace.errors import UnsupportedArchitectureError
from spantrace.kernels.proximity import proximity, span_edges
from spantrace.layers.deltanet import GatedDeltaNetLayer
from spantrace.layers.gated_attention import GatedAttentionLayer
from spantrace.layers.split import SplitLayer
from spantrace.selfcheck import capture_errors, layer_error

TYPES = ("qwen3_next", "qwen3_5_text", "qwen3_5_moe_text")
N_TOKENS = 14
_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16)
_COMMON = dict(
    vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
    linear_value_head_dim=12, linear_conv_kernel_dim=4, attention_bias=True, pad_token_id=0, bos_token_id=1,
    eos_token_id=2, tie_word_embeddings=False,
)
_SPECIFIC = {"qwen3_next": _MOE, "qwen3_5_text": {}, "qwen3_5_moe_text": _MOE}


@torch.no_grad()
def randomise(model: nn.Module, seed: int = 1) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        noise = torch.randn(parameter.shape, generator=generator)
        if leaf == "A_log":  # e^{A_log} in (0.02, 2.7): per-head decays from ~0.99 down to ~0.1
            parameter.copy_(torch.rand(parameter.shape, generator=generator) * 4.5 - 4.0)
        elif leaf == "dt_bias" or leaf == "bias" or "norm" in name:
            parameter.add_(noise * 0.3)
        elif parameter.dim() >= 2:
            # β and decay projections (in_proj_b/a, fused in_proj_ba) and the attention gates a bit larger still
            parameter.mul_(6.0 if any(p in name for p in ("in_proj_b", "in_proj_a", "q_proj")) else 3.0)
    return model


@functools.cache
def tiny(arch: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    config = AutoConfig.for_model(arch, **_COMMON, **_SPECIFIC[arch])
    torch.manual_seed(0)
    model = randomise(AutoModelForCausalLM.from_config(config)).eval()
    if dtype == torch.float64:
        model = copy.deepcopy(model).double()
        if getattr(model.config, "_experts_implementation", None) not in (None, "eager"):
            model.set_experts_implementation("eager")  # grouped matmuls have no float64 kernel
    return model


def ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 97, (N_TOKENS,), generator=torch.Generator().manual_seed(seed))


@functools.cache
def captured(arch: str, dtype: torch.dtype = torch.float32) -> Capture:
    return capture_residuals(QwenHybridAdapter(tiny(arch, dtype)), ids())


def split_of(model: nn.Module, capture: Capture, index: int) -> GatedDeltaNetLayer | GatedAttentionLayer:
    """Layer ``index``'s exact split as the adapter builds it for a trace."""
    return QwenHybridAdapter(model).mixing_layer(index, capture).split


def rebuild_error(split: GatedDeltaNetLayer | GatedAttentionLayer, capture: Capture, index: int) -> float:
    """The load-time self-check's measure on ``split`` served as a ``SplitLayer``: Σ parts + residual against
    the captured x_mid, every sink."""
    x_in, x_mid = capture.x_in[index], capture.x_mid[index]
    return layer_error(SplitLayer(index, "split", split, split.token_values, x_in, x_mid))


# --------------------------------------------------------------------------------------------------
# Slow float64 references: explicit loops, from the module's parameters and what it saw
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def mixer_io(
    model: nn.Module, module_name: str, index: int, inputs: tuple[torch.Tensor, dict] | None = None
) -> tuple[dict, tuple]:
    """The kwargs/args and output of layer ``index``'s mixer during a forward pass of ``model`` on ``ids()``, or on
    ``inputs`` (token ids and model inputs: an image run, tests/architectures/test_vision_hybrid.py)."""
    stack = text_stack(model)
    module = getattr(stack.layers[index], module_name)
    seen: dict = {}

    def pre(_m, args, kwargs):
        seen["args"], seen["kwargs"] = args, kwargs

    def post(_m, _args, _kwargs, output):
        seen["output"] = output

    handles = [module.register_forward_pre_hook(pre, with_kwargs=True),
               module.register_forward_hook(post, with_kwargs=True)]
    try:
        if inputs is None:
            model(ids()[None])
        else:
            tokens, model_inputs = inputs
            dtype = next(model.parameters()).dtype
            model(input_ids=tokens[None], **{k: v.to(dtype) if v.is_floating_point() else v
                                             for k, v in model_inputs.items()})
    finally:
        for handle in handles:
            handle.remove()
    return seen, seen["output"]


@torch.no_grad()
def reference_deltanet(model: nn.Module, index: int, bias_to_residual: bool = True) -> dict[str, np.ndarray]:
    """Float64 loops: the projections, conv, l2 norms, transitions T_t, the products Φ(j, i), A[i, j], the
    gated norm scale and every part[i, h, t]. Returns A [H, N, N], parts [N, H, N, D], residual [N, D],
    the values v [H, N, d_v], the norm scales s [H, N, d_v] and the mixer's own output [N, D]."""
    seen, output = mixer_io(model, "linear_attn", index)
    mixer = text_stack(model).layers[index].linear_attn
    x = (seen["kwargs"].get("hidden_states", seen["args"][0] if seen["args"] else None))[0].double()  # [N, D]
    n = x.shape[0]
    hk, hv, dk, dv = mixer.num_k_heads, mixer.num_v_heads, mixer.head_k_dim, mixer.head_v_dim
    rep = hv // hk

    def linear(module: nn.Linear) -> torch.Tensor:
        out = x @ module.weight.double().T
        return out + module.bias.double() if module.bias is not None else out

    if hasattr(mixer, "in_proj_qkvz"):  # grouped per key head: [q_g | k_g | v_g (rep heads) | z_g (rep heads)]
        qkvz = linear(mixer.in_proj_qkvz).reshape(n, hk, 2 * dk + 2 * rep * dv)
        q_raw, k_raw = qkvz[..., :dk], qkvz[..., dk:2 * dk]
        v_raw = qkvz[..., 2 * dk:2 * dk + rep * dv].reshape(n, hv, dv)
        z = qkvz[..., 2 * dk + rep * dv:].reshape(n, hv, dv)
        ba = linear(mixer.in_proj_ba).reshape(n, hk, 2 * rep)
        b, a = ba[..., :rep].reshape(n, hv), ba[..., rep:].reshape(n, hv)
        u = torch.cat([q_raw.reshape(n, -1), k_raw.reshape(n, -1), v_raw.reshape(n, -1)], dim=-1)
    else:
        u = linear(mixer.in_proj_qkv)
        z = linear(mixer.in_proj_z).reshape(n, hv, dv)
        b, a = linear(mixer.in_proj_b), linear(mixer.in_proj_a)
    weight = mixer.conv1d.weight.double()[:, 0, :]  # [conv, K]
    kernel = weight.shape[1]
    bias = mixer.conv1d.bias.double() if mixer.conv1d.bias is not None else torch.zeros(u.shape[1], dtype=u.dtype)
    # conv1d with padding K−1, first N outputs: out[t] = Σ_m w[m] · u[t − (K−1) + m]
    pre = torch.zeros_like(u)
    for t in range(n):
        for m in range(kernel):
            source = t - (kernel - 1) + m
            if source >= 0:
                pre[t] += weight[:, m] * u[source]
        pre[t] += bias
    post = pre * torch.sigmoid(pre)
    key_width = hk * dk
    qs = post[:, :key_width].reshape(n, hk, dk)
    ks = post[:, key_width:2 * key_width].reshape(n, hk, dk)
    vs = post[:, 2 * key_width:].reshape(n, hv, dv)
    beta = torch.sigmoid(b)  # [N, H_v]
    decay = torch.exp(-mixer.A_log.double().exp() * torch.nn.functional.softplus(a + mixer.dt_bias.double()))
    eye = torch.eye(dk, dtype=torch.float64)
    A = torch.zeros(hv, n, n, dtype=torch.float64)
    for h in range(hv):
        g = h // rep
        q = [qs[t, g] / torch.sqrt((qs[t, g] ** 2).sum() + 1e-6) / dk**0.5 for t in range(n)]
        k = [ks[t, g] / torch.sqrt((ks[t, g] ** 2).sum() + 1e-6) for t in range(n)]
        T = [decay[t, h] * (eye - beta[t, h] * torch.outer(k[t], k[t])) for t in range(n)]
        for i in range(n):
            for j in range(i + 1):
                phi = eye.clone()
                for t in range(j + 1, i + 1):  # Φ(j, i) = T_i ⋯ T_{j+1}
                    phi = T[t] @ phi
                A[h, i, j] = beta[j, h] * (q[i] @ phi @ k[j])
    values = vs.transpose(0, 1)  # [H_v, N, d_v]
    o = torch.einsum("hij,hjv->hiv", A, values)
    norm = mixer.norm
    s = norm.weight.double() * torch.nn.functional.silu(z.transpose(0, 1)) / torch.sqrt(
        o.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)  # [H_v, N, d_v]
    w_out = mixer.out_proj.weight.double().T.reshape(hv, dv, -1)  # [H_v, d_v, D]
    ratio = torch.sigmoid(pre[:, 2 * key_width:]).reshape(n, hv, dv)  # silu(p)/p
    u_v = u[:, 2 * key_width:].reshape(n, hv, dv)
    taps = weight[2 * key_width:].reshape(hv, dv, kernel)
    bias_v = bias[2 * key_width:].reshape(hv, dv)
    parts = torch.zeros(n, hv, n, w_out.shape[-1], dtype=torch.float64)
    residual = torch.zeros(n, w_out.shape[-1], dtype=torch.float64)
    for i in range(n):
        for h in range(hv):
            for j in range(i + 1):
                for m in range(kernel):
                    t = j - (kernel - 1) + m
                    if t >= 0:
                        piece = A[h, i, j] * s[h, i] * ratio[j, h] * taps[h, :, m] * u_v[t, h]
                        parts[i, h, t] += piece @ w_out[h]
                residual[i] += (A[h, i, j] * s[h, i] * ratio[j, h] * bias_v[h]) @ w_out[h]
    if mixer.out_proj.bias is not None:
        residual += mixer.out_proj.bias.double()
    return dict(A=A.numpy(), parts=parts.numpy(), residual=residual.numpy(), values=values.numpy(),
                scale=s.numpy(), output=output[0].double().numpy())


@torch.no_grad()
def reference_attention(model: nn.Module, index: int) -> dict[str, np.ndarray]:
    """Float64 loops over the probabilities the model's eager attention applied: parts [N, H, N, D],
    residual (the o bias) [D], α [H, N, N] and the module's own output [N, D]."""
    model = copy.deepcopy(model).double()
    model.set_attn_implementation("eager")
    if getattr(model.config, "_experts_implementation", None) not in (None, "eager"):
        model.set_experts_implementation("eager")
    seen, (output, probabilities) = mixer_io(model, "self_attn", index)
    attention = text_stack(model).layers[index].self_attn
    x = seen["kwargs"]["hidden_states"][0]  # [N, D]
    n, heads, d = x.shape[0], attention.config.num_attention_heads, attention.head_dim
    groups = heads // attention.config.num_key_value_heads
    gates = torch.sigmoid(attention.q_proj(x).view(n, heads, 2 * d)[..., d:])  # [N, H, d]
    values = attention.v_proj(x).view(n, -1, d)  # [N, G, d]
    alpha = probabilities[0]  # [H, N, N]
    w_o = attention.o_proj.weight.T.reshape(heads, d, -1)  # [H, d, D]
    parts = torch.zeros(n, heads, n, w_o.shape[-1], dtype=torch.float64)
    for i in range(n):
        for h in range(heads):
            for j in range(i + 1):
                parts[i, h, j] = (gates[i, h] * alpha[h, i, j] * values[j, h // groups]) @ w_o[h]
    return dict(parts=parts.numpy(), residual=attention.o_proj.bias.numpy(), alpha=alpha.numpy(),
                output=output[0].numpy())


def sink_set(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sinks = torch.tensor([3, 7, 7, 9, 12])  # a repeated sink: weights add
    return sinks, torch.rand(sinks.shape[0], generator=generator, dtype=torch.float64) + 0.2


def aggregate(parts: np.ndarray, sinks: torch.Tensor, weights: torch.Tensor) -> np.ndarray:
    """Σ_i w_i part[i] -> [H, N, D]."""
    return sum(float(w) * parts[int(i)] for i, w in zip(sinks, weights, strict=True))


def assert_close(actual, expected, rtol: float = 1e-9) -> None:
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = max(np.abs(expected).max(), 1e-30)
    assert np.abs(actual - expected).max() <= rtol * scale, np.abs(actual - expected).max() / scale


# --------------------------------------------------------------------------------------------------
# The model types and their layers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", TYPES)
def test_layer_kinds(arch: str) -> None:
    model = tiny(arch)
    assert model.config.layer_types == ["linear_attention"] * 3 + ["full_attention"]
    capture = captured(arch)
    kinds = [type(split_of(model, capture, i)) for i in range(4)]
    assert kinds == [GatedDeltaNetLayer] * 3 + [GatedAttentionLayer]
    # the randomisation bites: decays, β and the attention gates spread, not at their initial values
    decays = torch.cat([split_of(model, capture, i).decay.flatten() for i in range(3)])
    betas = torch.cat([split_of(model, capture, i).beta.flatten() for i in range(3)])
    assert decays.min() < 0.3 and decays.max() > 0.95
    assert betas.min() < 0.25 and betas.max() > 0.8
    gates = split_of(model, capture, 3).queries_gates(torch.arange(N_TOKENS))[1]
    assert gates.min() < 0.1 and gates.max() > 0.9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("arch", TYPES)
def test_parts_rebuild_the_layer_output(arch: str, dtype: torch.dtype) -> None:
    """Σ_{h,j} part + residual = x_mid as the model computed it (captured), every layer and sink: the
    load-time self-check's measure on the adapter's layers."""
    errors = capture_errors(QwenHybridAdapter(tiny(arch, dtype)), captured(arch, dtype))
    assert max(errors) <= 1e-5, errors


def test_multimodal_wrapper() -> None:
    """Qwen3.5-MoE as released (an image-text wrapper): the text stack is found one level down, its layers are
    the same two kinds, and text-only prompts rebuild exactly (the wrapper's 3-D positions are all equal)."""
    from transformers import AutoModelForImageTextToText

    text = AutoConfig.for_model("qwen3_5_moe_text", **_COMMON, **_MOE).to_dict()
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=48, patch_size=14)
    config = AutoConfig.for_model("qwen3_5_moe", text_config=text, vision_config=vision, image_token_id=3,
                                  video_token_id=4, vision_start_token_id=5, vision_end_token_id=6)
    torch.manual_seed(0)
    model = randomise(AutoModelForImageTextToText.from_config(config)).eval()
    adapter = QwenHybridAdapter(model)
    capture = capture_residuals(adapter, ids())
    kinds = [type(adapter.mixing_layer(i, capture).split) for i in range(4)]
    assert kinds == [GatedDeltaNetLayer] * 3 + [GatedAttentionLayer]
    assert max(capture_errors(adapter, capture)) <= 1e-5


def test_bfloat16_within_the_self_check_tolerance() -> None:
    """In bfloat16 the model rounds its own mixer output to 8 bits; the split stays within the load-time
    self-check's bf16 tolerance (3e-2) with float32 arithmetic."""
    adapter = QwenHybridAdapter(copy.deepcopy(tiny("qwen3_next")).to(torch.bfloat16))
    assert max(capture_errors(adapter, capture_residuals(adapter, ids()))) <= 3e-2


@pytest.mark.parametrize("arch", ["qwen3_next", "qwen3_5_text"])
def test_loop_recurrence_rebuilds_the_layer_output(arch: str) -> None:
    """The token-loop recurrences (``recurrence="loop"``) rebuild the captured x_mid too."""
    model = tiny(arch)
    capture = captured(arch)
    for index in range(3):
        layer = GatedDeltaNetLayer(text_stack(model).layers[index], capture.x_in[index], recurrence="loop")
        assert rebuild_error(layer, capture, index) <= 1e-5


# --------------------------------------------------------------------------------------------------
# Gated DeltaNet against the float64 reference
# --------------------------------------------------------------------------------------------------


# Both recurrences run in float64 for a float64 model: agreement to rounding (the chunked one inverts 64×64
# unit-triangular blocks, so a little more of it).
TOLERANCE = {"loop": 1e-9, "chunked": 1e-8}


@functools.cache
def deltanet_case(arch: str, index: int, recurrence: str) -> tuple[GatedDeltaNetLayer, dict[str, np.ndarray]]:
    model = tiny(arch, torch.float64)
    x_in = captured(arch, torch.float64).x_in
    layer = GatedDeltaNetLayer(text_stack(model).layers[index], x_in[index], recurrence=recurrence)
    return layer, reference(arch, index)


@functools.cache
def reference(arch: str, index: int) -> dict[str, np.ndarray]:
    return reference_deltanet(tiny(arch, torch.float64), index)


@pytest.mark.parametrize("arch", ["qwen3_next", "qwen3_5_text"])
def test_deltanet_reference_is_the_model(arch: str) -> None:
    """The reference itself: its parts and residual add up to the mixer output the model produced."""
    ref = reference(arch, 1)
    rebuilt = ref["parts"].sum((1, 2)) + ref["residual"]
    assert_close(rebuilt, ref["output"], rtol=1e-6)  # the model's own kernel runs in float32


@pytest.mark.parametrize("recurrence", ["loop", "chunked"])
@pytest.mark.parametrize("arch", ["qwen3_next", "qwen3_5_text"])
def test_deltanet_rows_and_token_parts(arch: str, recurrence: str) -> None:
    layer, ref = deltanet_case(arch, 1, recurrence)
    rtol = TOLERANCE[recurrence]
    sinks = torch.arange(N_TOKENS)
    rows = layer.rows(sinks)
    assert_close(rows, ref["A"], rtol)
    assert (rows[:, *torch.triu_indices(N_TOKENS, N_TOKENS, 1)] == 0).all()  # causal: exact zeros
    assert_close(layer.rows(torch.tensor([9, 2, 9])), ref["A"][:, [9, 2, 9]], rtol)  # any order, repeats
    assert_close(layer.sink_scale, ref["scale"], rtol)
    for sink in (0, 5, N_TOKENS - 1):
        assert_close(layer.token_parts(sink), ref["parts"][sink], rtol)
    assert_close(layer.residual(sinks), captured(arch, torch.float64).x_in[1].numpy())


@pytest.mark.parametrize("recurrence", ["loop", "chunked"])
@pytest.mark.parametrize("arch", ["qwen3_next", "qwen3_5_text"])
def test_deltanet_span_values(arch: str, recurrence: str) -> None:
    """The backward recurrence equals Σ_i w_i part[i] of the explicit N×N reference."""
    layer, ref = deltanet_case(arch, 2, recurrence)
    rtol = TOLERANCE[recurrence]
    for seed in range(2):
        sinks, weights = sink_set(seed)
        values, out_weight = layer.span_values(sinks, weights)
        assert values.shape == (4, N_TOKENS, 12) and out_weight.shape == (4, 12, 48)
        assert_close(torch.bmm(values, out_weight), aggregate(ref["parts"], sinks, weights), rtol)
    # every sink at once, unit weights: the whole layer update
    values, out_weight = layer.span_values(torch.arange(N_TOKENS), torch.ones(N_TOKENS))
    assert_close(torch.bmm(values, out_weight), ref["parts"].sum(0), rtol)
    assert not layer.span_values(torch.tensor([], dtype=torch.long), torch.ones(0))[0].any()


def test_deltanet_position_attribution() -> None:
    """``conv_attribution="position"``: the whole v_j at position j, Σ_i w_i A[i, j] s_i ⊙ v_j; same totals."""
    model = tiny("qwen3_5_text", torch.float64)
    capture = captured("qwen3_5_text", torch.float64)
    layer = GatedDeltaNetLayer(text_stack(model).layers[0], capture.x_in[0], conv_attribution="position",
                               recurrence="loop")
    ref = reference("qwen3_5_text", 0)
    sinks, weights = sink_set(3)
    values, _ = layer.span_values(sinks, weights)
    expected = np.zeros_like(ref["values"])
    for i, w in zip(sinks.tolist(), weights.tolist(), strict=True):
        expected += w * ref["A"][:, i, :, None] * ref["scale"][:, i, None, :] * ref["values"]
    assert_close(values, expected)
    assert_close(torch.bmm(values, layer.out_weight).sum(1), aggregate(ref["parts"], sinks, weights).sum(1))
    assert rebuild_error(layer, capture, 0) <= 1e-5


def test_deltanet_biases_stay_with_the_residual() -> None:
    """A convolution bias (none in the released models) and an out_proj bias: no source token, residual."""
    model = copy.deepcopy(tiny("qwen3_next", torch.float64))
    mixer = text_stack(model).layers[1].linear_attn
    generator = torch.Generator().manual_seed(7)
    mixer.conv1d.bias = nn.Parameter(torch.randn(mixer.conv_dim, generator=generator, dtype=torch.float64) * 0.5)
    mixer.out_proj.bias = nn.Parameter(torch.randn(48, generator=generator, dtype=torch.float64) * 0.5)
    capture = capture_residuals(QwenHybridAdapter(model), ids())
    x_in = capture.x_in
    ref = reference_deltanet(model, 1)
    assert_close(ref["parts"].sum((1, 2)) + ref["residual"], ref["output"], rtol=1e-6)
    for attribution in ("token", "position"):
        for recurrence in ("loop", "chunked"):
            layer = GatedDeltaNetLayer(text_stack(model).layers[1], x_in[1], conv_attribution=attribution,
                                       recurrence=recurrence)
            assert rebuild_error(layer, capture, 1) <= 1e-5
            assert_close(layer.residual(torch.arange(N_TOKENS)) - x_in[1], ref["residual"], TOLERANCE[recurrence])
    for recurrence in ("loop", "chunked"):
        layer = GatedDeltaNetLayer(text_stack(model).layers[1], x_in[1], recurrence=recurrence)
        sinks, weights = sink_set(5)
        values, out_weight = layer.span_values(sinks, weights)
        assert_close(torch.bmm(values, out_weight), aggregate(ref["parts"], sinks, weights), TOLERANCE[recurrence])
        assert_close(layer.token_parts(9), ref["parts"][9], TOLERANCE[recurrence])


def test_deltanet_refuses_other_activations() -> None:
    model = copy.deepcopy(tiny("qwen3_5_text"))
    layer = text_stack(model).layers[0]
    layer.linear_attn.activation = "gelu"
    with pytest.raises(UnsupportedArchitectureError, match="silu"):
        GatedDeltaNetLayer(layer, captured("qwen3_5_text").x_in[0])


# --------------------------------------------------------------------------------------------------
# Gated attention against the float64 reference
# --------------------------------------------------------------------------------------------------


@functools.cache
def attention_case(arch: str) -> tuple[GatedAttentionLayer, dict[str, np.ndarray]]:
    model = tiny(arch, torch.float64)
    layer = split_of(model, captured(arch, torch.float64), 3)
    layer.chunk_size = 3  # several sink chunks in span_values
    return layer, reference_attention(model, 3)


@pytest.mark.parametrize("arch", ["qwen3_next", "qwen3_5_text"])
def test_gated_attention_against_reference(arch: str) -> None:
    layer, ref = attention_case(arch)
    assert_close(ref["parts"].sum((1, 2)) + ref["residual"], ref["output"], rtol=1e-9)
    sinks = torch.arange(N_TOKENS)
    assert_close(layer.rows(sinks), ref["alpha"], rtol=1e-6)  # rows are float32, like spantrace's
    for sink in (0, 6, N_TOKENS - 1):
        assert_close(layer.token_parts(sink), ref["parts"][sink], rtol=1e-6)
    for seed in range(2):
        sinks, weights = sink_set(seed)
        values, out_weight = layer.span_values(sinks, weights)
        assert values.shape == (4, N_TOKENS, 16) and out_weight.shape == (4, 16, 48)
        assert_close(torch.bmm(values, out_weight), aggregate(ref["parts"], sinks, weights), rtol=1e-6)
    assert_close(layer.residual(torch.arange(N_TOKENS)) - layer.x_in, np.broadcast_to(ref["residual"], (N_TOKENS, 48)))


def test_gated_attention_refuses_plain_attention() -> None:
    model = copy.deepcopy(tiny("qwen3_5_text"))
    layer = text_stack(model).layers[3]
    layer.self_attn.q_proj = nn.Linear(48, 4 * 16)
    with pytest.raises(UnsupportedArchitectureError, match="not a gated layer"):
        split_of(model, captured("qwen3_5_text"), 3)


# --------------------------------------------------------------------------------------------------
# The shape FlashTrace needs: span_edges on effective values with alpha_bar = ones
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", [1, 3])
def test_span_edges_on_effective_values(index: int) -> None:
    arch = "qwen3_next"
    model = tiny(arch, torch.float64)
    capture = captured(arch, torch.float64)
    x_mid = capture.x_mid
    layer = split_of(model, capture, index)
    ref = reference_attention(model, index) if index == 3 else reference_deltanet(model, index)
    sinks, weights = sink_set(2)
    values, out_weight = layer.span_values(sinks, weights)
    target = (weights[:, None] * x_mid[index][sinks]).sum(0)  # Y_S = Σ w_i x_mid_i
    residual = (weights[:, None] * layer.residual(sinks)).sum(0)  # R_S
    heads, width = values.shape[:2]
    edges, denominator = span_edges(torch.ones(heads, width), values, out_weight, target, residual)
    parts = torch.from_numpy(aggregate(ref["parts"], sinks, weights))  # [H, N, D]
    per_source = proximity(parts, target).sum(0)  # [N]
    expected = per_source / (per_source.sum() + proximity(residual, target))
    assert_close(edges, expected, rtol=1e-5)
    assert denominator > 0


def test_chunked_operator_across_several_blocks() -> None:
    """``DeltaRule`` over 150 positions (three 64-blocks, the last one padded) against the token loop, both ways,
    with decays, β and keys random and a wide value block: forward ``A v`` and transpose ``Aᵀ y`` in float64."""
    from spantrace.kernels.delta_rule import DeltaRule

    generator = torch.Generator().manual_seed(5)
    heads, n, dk, width = 3, 150, 8, 5
    keys = torch.nn.functional.normalize(torch.randn(heads, n, dk, generator=generator, dtype=torch.float64), dim=-1)
    queries = torch.randn(heads, n, dk, generator=generator, dtype=torch.float64) * dk**-0.5
    beta = torch.rand(heads, n, generator=generator, dtype=torch.float64)
    log_decay = -torch.rand(heads, n, generator=generator, dtype=torch.float64) * 0.3
    values = torch.randn(heads, n, width, generator=generator, dtype=torch.float64)
    cotangent = torch.randn(heads, n, width, generator=generator, dtype=torch.float64)
    operator = DeltaRule(queries, keys, beta, log_decay)
    # the token loop: S_t = e^{g_t}(S − β k (kᵀ S)) + β k v_tᵀ, o_t = S_tᵀ q_t
    state = torch.zeros(heads, dk, width, dtype=torch.float64)
    loop = torch.empty_like(values)
    for t in range(n):
        decay, b, k = log_decay[:, t, None, None].exp(), beta[:, t, None, None], keys[:, t]
        state = decay * (state - b * k[:, :, None] * torch.einsum("hkw,hk->hw", state, k)[:, None, :])
        state = state + b * k[:, :, None] * values[:, t, None, :]
        loop[:, t] = torch.einsum("hkw,hk->hw", state, queries[:, t])
    assert torch.allclose(operator.forward(values), loop, rtol=0, atol=1e-10 * loop.abs().max())
    # transpose: <A v, y> = <v, Aᵀ y> for every head
    lhs = (operator.forward(values) * cotangent).sum((1, 2))
    rhs = (values * operator.transpose(cotangent)).sum((1, 2))
    assert torch.allclose(lhs, rhs, rtol=1e-10)
    assert operator.transpose(cotangent)[:, -1].abs().max() > 0  # the padded block's real positions are reached

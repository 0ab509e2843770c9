"""Mamba-2 mixers split over source tokens (spantrace/layers/mamba2.py, spantrace/kernels/ssd_scan.py).

Tiny random hybrids of Nemotron-H, Granite 4.0-H (granitemoehybrid), Bamba and Falcon-H1 (three variants
of its gated norm), every detail of the mixer switched on and moved away from its initial value: A_log
spread over a decade, dt_bias spread so the time-step clamp bites, D random, conv weights ×3 with a bias,
in/out projection biases, norm gains (the pre-mixer norm and the gated norm), 2 B/C groups (a norm group
spans two heads), Falcon-H1's μP multipliers. Sequences of 14 tokens, the model's own scan in chunks of 5.

Each model is checked two ways:

1. Σ parts + residual equals the layer's own output as the model computed it (captured with hooks), in
   float32 and float64 (the reference scan runs in float32 even in a float64 model, hence 1e-5).
2. A slow float64 reference written here with explicit loops (the per-head N×N mixing matrix M, the conv
   window, the gated norm) gives the parts; token_parts, residual and span_values (random sink weights,
   chunks of 3 and 64) must agree with it to float64 rounding, and the reference itself must sum to the
   model's output.
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from spantrace.architectures.mamba_hybrid import is_mamba2_layer, mamba2_branch
from spantrace.errors import UnsupportedArchitectureError
from spantrace.layers.mamba2 import Mamba2Mixing

N_TOKENS = 14
_COMMON = dict(vocab_size=97, hidden_size=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
_MAMBA = dict(mamba_n_heads=4, mamba_d_state=5, mamba_n_groups=2, mamba_d_conv=4, mamba_chunk_size=5,
              mamba_proj_bias=True, mamba_conv_bias=True)
_FALCON = dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
               mamba_d_head=6, mamba_d_ssm=24, projectors_bias=True, time_step_limit=(0.03, 2.0),
               ssm_multipliers=[0.7, 1.3, 0.8, 1.2, 0.9], ssm_in_multiplier=0.6, ssm_out_multiplier=1.7,
               attention_in_multiplier=0.8, attention_out_multiplier=1.3, key_multiplier=0.9, **_MAMBA)
CONFIGS: dict[str, tuple[str, dict]] = {
    # the mixer clamps dt from below: at time_step_min up to transformers 5.24, at time_step_limit[0] from 5.25
    "nemotron_h": ("nemotron_h", dict(
        layers_block_type=["linear_attention", "full_attention", "mlp", "linear_attention"], num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, intermediate_size=48, ssm_state_size=5, mamba_num_heads=4,
        mamba_head_dim=6, n_groups=2, conv_kernel=4, chunk_size=5, use_bias=True, use_conv_bias=True,
        time_step_min=0.05, time_step_limit=(0.05, float("inf")))),
    # NoPE attention, residual multiplier on the mixer branch
    "granitemoehybrid": ("granitemoehybrid", dict(
        num_hidden_layers=2, layer_types=["mamba", "attention"], num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, shared_intermediate_size=40, num_local_experts=0, mamba_d_head=8, mamba_expand=1,
        residual_multiplier=0.37, attention_multiplier=0.2, position_embedding_type=None,
        time_step_limit=(0.03, 1.5), **_MAMBA)),
    "bamba": ("bamba", dict(
        num_hidden_layers=2, attn_layer_indices=[1], num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, mamba_d_head=8, mamba_expand=1, time_step_limit=(0.03, 1.5), **_MAMBA)),
    # parallel attention + SSM in every layer; the three forms of the gated norm
    "falcon_h1": ("falcon_h1", dict(mamba_rms_norm=True, mamba_norm_before_gate=False, **_FALCON)),
    "falcon_h1_norm_first": ("falcon_h1", dict(mamba_rms_norm=True, mamba_norm_before_gate=True, **_FALCON)),
    "falcon_h1_no_norm": ("falcon_h1", dict(mamba_rms_norm=False, **_FALCON)),
}
ARCHS = tuple(CONFIGS)


@functools.cache
def tiny(arch: str) -> nn.Module:
    """A tiny hybrid with every Mamba-2 detail randomised, float32, eval mode."""
    model_type, specific = CONFIGS[arch]
    config = AutoConfig.for_model(model_type, **_COMMON, **specific)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "A_log":  # A from −0.4 to −12: slow and fast heads
                parameter.copy_(torch.empty(parameter.shape).uniform_(-1.0, 2.5, generator=generator))
            elif leaf == "dt_bias":  # softplus(dt) from ~0.01 (clamped) to ~3
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 1.5 - 1.0)
            elif leaf == "D":
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
            elif leaf == "bias" or "norm" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
            elif parameter.dim() >= 2:
                parameter.mul_(3.0)
    return model.eval()


def ids() -> torch.Tensor:
    return torch.randint(3, 97, (1, N_TOKENS), generator=torch.Generator().manual_seed(7))


def mamba_layers(model: nn.Module) -> list[int]:
    return [index for index, layer in enumerate(model.model.layers) if is_mamba2_layer(layer)]


def capture(model: nn.Module) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per Mamba-2 layer: ``x_in [N, D]`` and the residual right after the mixer branch, as the model computed it
    (Falcon-H1: the residual after both branches minus its attention branch)."""
    got: dict[str, torch.Tensor] = {}
    hooks = []

    def keep(key: str, output: bool = False):
        def hook(module, args, kwargs_or_out, *rest):
            if output:
                value = rest[0] if rest else kwargs_or_out
                got[key] = (value[0] if isinstance(value, tuple) else value)[0]
            else:
                got[key] = (args[0] if args else kwargs_or_out["hidden_states"])[0]
        return hook

    for index in mamba_layers(model):
        layer = model.model.layers[index]
        hooks.append(layer.register_forward_pre_hook(keep(f"in{index}"), with_kwargs=True))
        kind = type(layer).__name__
        if kind == "NemotronHBlock":
            hooks.append(layer.register_forward_hook(keep(f"out{index}", output=True)))
        elif kind == "GraniteMoeHybridDecoderLayer":
            after = layer.post_attention_layernorm
            hooks.append(after.register_forward_pre_hook(keep(f"out{index}"), with_kwargs=True))
        else:  # Bamba, Falcon-H1
            hooks.append(layer.pre_ff_layernorm.register_forward_pre_hook(keep(f"out{index}"), with_kwargs=True))
        if kind == "FalconH1DecoderLayer":
            hooks.append(layer.self_attn.register_forward_hook(keep(f"attn{index}", output=True), with_kwargs=True))
    try:
        with torch.no_grad():
            model(ids())
    finally:
        for hook in hooks:
            hook.remove()
    captured = {}
    for index in mamba_layers(model):
        out = got[f"out{index}"]
        if f"attn{index}" in got:
            out = out - got[f"attn{index}"] * model.model.layers[index].attn_out_multiplier
        captured[index] = (got[f"in{index}"], out)
    return captured


@functools.cache
def captured64(arch: str) -> tuple[nn.Module, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """A float64 copy of the tiny model (the cached float32 one is left as it is) and its capture."""
    model = copy.deepcopy(tiny(arch)).double()
    return model, capture(model)


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


# --- 1. parts sum to what the model computed ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("arch", ARCHS)
def test_parts_sum_to_the_layer_output(arch: str, dtype: torch.dtype) -> None:
    if dtype == torch.float64:
        model, captured = captured64(arch)  # a float64 copy
    else:
        model = tiny(arch)
        captured = capture(model)
    assert mamba_layers(model)
    for index, (x_in, x_out) in captured.items():
        mixing = Mamba2Mixing.from_branch(mamba2_branch(model.model.layers[index]), x_in, chunk=4)
        assert mixing.values.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert mixing.max_relative_error(x_out) <= 1e-5, (arch, index)
        assert mixing.max_relative_error() <= 1e-5  # against the mixer's own forward
        # token_parts + residual, sink by sink
        for sink in (0, 5, N_TOKENS - 1):
            rebuilt = mixing.token_parts(sink).sum((0, 1)) + mixing.residual(torch.tensor([sink]))[0]
            update = (x_out - x_in)[sink].abs().max()
            assert float((rebuilt - x_out[sink].to(rebuilt)).abs().max() / update) <= 1e-5


def test_details_are_exercised() -> None:
    """The randomisation reaches what it is meant to: the dt clamp bites, decays differ, biases exist."""
    for arch in ("nemotron_h", "granitemoehybrid"):
        model = tiny(arch)
        index, (x_in, _) = next(iter(capture(model).items()))
        mixing = Mamba2Mixing.from_branch(mamba2_branch(model.model.layers[index]), x_in)
        floor = float(mamba2_branch(model.model.layers[index]).mixer.time_step_limit[0])
        assert (mixing.dt == floor).any() and (mixing.dt > floor).any()
        assert mixing.conv_bias is not None and mixing.out_bias is not None
        assert mixing.log_decay.min() < -1.0 and mixing.log_decay.max() > -0.1
        assert (mixing.silu_ratio < 0.5).any() and (mixing.silu_ratio > 0.5).any()  # both signs of a


def test_falcon_h1_layer_is_the_union_of_its_two_branches() -> None:
    """Falcon-H1: x_mid = (x_in + Mamba-2 parts + their biases) + the attention branch, exactly."""
    model = tiny("falcon_h1")
    captured = capture(model)
    assert set(captured) == {0, 1}
    for index, (x_in, mamba_out) in captured.items():
        mixing = Mamba2Mixing.from_branch(mamba2_branch(model.model.layers[index]), x_in)
        assert mixing.branch.parallel_attention and mixing.branch.output_scale == pytest.approx(1.7)
        assert mixing.max_relative_error(mamba_out) <= 1e-5
        alone = mixing.residual(torch.arange(N_TOKENS), include_x_in=False)
        assert torch.allclose(alone + mixing.x_in, mixing.residual(torch.arange(N_TOKENS)))


def test_bfloat16_within_the_self_check_tolerance() -> None:
    model = copy.deepcopy(tiny("nemotron_h")).to(torch.bfloat16)
    for index, (x_in, x_out) in capture(model).items():
        mixing = Mamba2Mixing.from_branch(mamba2_branch(model.model.layers[index]), x_in)
        assert mixing.values.dtype == torch.float32
        assert mixing.max_relative_error(x_out) <= 3e-2


# --- 2. a slow float64 reference ------------------------------------------------------------------------------


def reference(layer: nn.Module, x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Explicit loops in float64: ``M [H, N, N]``, ``parts [H, N(sink), N(source), D]``, ``residual [N, D]``.

    Written from the Hugging Face modules' definitions, independently of spantrace.layers.mamba2.
    """
    kind = type(layer).__name__
    mixer = layer.mixer if kind == "NemotronHBlock" else layer.mamba
    norm = layer.norm if kind == "NemotronHBlock" else layer.input_layernorm
    rho = {"GraniteMoeHybridDecoderLayer": getattr(layer, "residual_multiplier", 1.0),
           "FalconH1DecoderLayer": getattr(layer, "ssm_out_multiplier", 1.0)}.get(kind, 1.0)
    falcon = kind == "FalconH1DecoderLayer"
    heads, p, n, groups = mixer.num_heads, mixer.head_dim, mixer.ssm_state_size, mixer.n_groups
    inner, k_size, length = mixer.intermediate_size, mixer.conv_kernel_size, x_in.shape[0]
    with torch.no_grad():
        h_in = norm(x_in.double())
        if falcon:
            projected = mixer.in_proj(h_in * mixer.ssm_in_multiplier) * mixer.mup_vector[0, 0]
        else:
            projected = mixer.in_proj(h_in)
        z, xi, dt_raw = projected[:, :inner], projected[:, inner : inner + mixer.conv_dim], projected[:, -heads:]
        weight, bias = mixer.conv1d.weight[:, 0, :], mixer.conv1d.bias  # [conv_dim, K], [conv_dim]
        a = torch.zeros(length, mixer.conv_dim, dtype=torch.float64)
        for j in range(length):
            a[j] = bias
            for k in range(k_size):
                t = j - k_size + 1 + k
                if t >= 0:
                    a[j] += weight[:, k] * xi[t]
        x = F.silu(a[:, :inner])
        b_all = F.silu(a[:, inner : inner + groups * n]).reshape(length, groups, n)
        c_all = F.silu(a[:, inner + groups * n :]).reshape(length, groups, n)
        lo, hi = mixer.time_step_limit
        dt = F.softplus(dt_raw + mixer.dt_bias).clamp(min=lo, max=hi)  # [N, H]
        big_a = -torch.exp(mixer.A_log)
        steps, rates, skips = dt.tolist(), big_a.tolist(), mixer.D.tolist()  # plain floats for the loops
        mix = torch.zeros(heads, length, length, dtype=torch.float64)
        for h in range(heads):
            g = h // (heads // groups)
            for i in range(length):
                for j in range(i + 1):
                    decay = math.exp(sum(steps[t][h] * rates[h] for t in range(j + 1, i + 1)))
                    mix[h, i, j] = float(c_all[i, g] @ b_all[j, g]) * steps[j][h] * decay
                mix[h, i, i] += skips[h]
        y = torch.zeros(length, inner, dtype=torch.float64)
        for h in range(heads):
            for i in range(length):
                for j in range(i + 1):
                    y[i, h * p : (h + 1) * p] += mix[h, i, j] * x[j, h * p : (h + 1) * p]
        # the gated norm, per norm group, as a per-sink per-channel scale
        gate = F.silu(z)
        gated_norm = not falcon or mixer.mamba_rms_norm
        before = falcon and gated_norm and mixer.norm.norm_before_gate
        scale = gate.clone()
        if gated_norm:
            norm_groups = mixer.norm.n_groups if falcon else inner // mixer.norm.group_size
            width = inner // norm_groups
            for i in range(length):
                normed_input = y[i] if before else y[i] * gate[i]
                for q in range(norm_groups):
                    block = slice(q * width, (q + 1) * width)
                    rms = 1.0 / math.sqrt(float(normed_input[block].pow(2).mean()) + mixer.norm.variance_epsilon)
                    scale[i, block] = mixer.norm.weight[block] * rms * gate[i, block]
        w_out, b_out = mixer.out_proj.weight, mixer.out_proj.bias  # [D, inner], [D]
        ratio = torch.sigmoid(a[:, :inner])
        u = xi[:, :inner]
        parts = torch.zeros(heads, length, length, x_in.shape[1], dtype=torch.float64)
        residual = x_in.double() + rho * b_out
        for h in range(heads):
            ch = slice(h * p, (h + 1) * p)
            for i in range(length):
                for t in range(i + 1):
                    through = torch.zeros(p, dtype=torch.float64)
                    for j in range(t, min(i, t + k_size - 1) + 1):
                        through += mix[h, i, j] * ratio[j, ch] * weight[ch, t - j + k_size - 1]
                    parts[h, i, t] = rho * (w_out[:, ch] @ (scale[i, ch] * through * u[t, ch]))
                conv_bias = sum(mix[h, i, j] * ratio[j, ch] * bias[ch] for j in range(i + 1))
                residual[i] += rho * (w_out[:, ch] @ (scale[i, ch] * conv_bias))
    return mix, parts, residual


@functools.cache
def reference_of(arch: str, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    model, captured = captured64(arch)
    return reference(model.model.layers[index], captured[index][0])


@pytest.mark.parametrize("arch", ARCHS)
def test_slow_reference_agrees(arch: str) -> None:
    model, captured = captured64(arch)
    generator = torch.Generator().manual_seed(3)
    index = mamba_layers(model)[0]
    x_in, x_out = captured[index]
    mix, parts, residual = reference_of(arch, index)
    # the reference itself sums to the model's output (whose scan runs in float32)
    assert float((parts.sum((0, 2)) + residual - x_out).abs().max() / (x_out - x_in).abs().max()) <= 1e-5
    layer = model.model.layers[index]
    for chunk in (3, 64):
        mixing = Mamba2Mixing.from_branch(mamba2_branch(layer), x_in, chunk=chunk)
        sinks = torch.arange(N_TOKENS)
        assert relative(mixing.mixing_rows(sinks), mix) <= 1e-12
        assert relative(mixing.residual(sinks), residual) <= 1e-12
        for sink in range(N_TOKENS):
            assert relative(mixing.token_parts(sink), parts[:, sink]) <= 1e-12
        for trial in range(3):
            count = 1 + trial * 3
            chosen = torch.randint(0, N_TOKENS, (count,), generator=generator)
            weights = torch.randn(count, generator=generator, dtype=torch.float64)
            values, out_weight = mixing.span_values(chosen, weights)
            assert values.shape == (mixing.num_heads, N_TOKENS, out_weight.shape[1])
            aggregated = torch.einsum("hnp,hpd->hnd", values, out_weight)
            want = torch.einsum("m,hmnd->hnd", weights, parts[:, chosen])
            assert relative(aggregated, want) <= 1e-12


@pytest.mark.parametrize("arch", ["nemotron_h", "falcon_h1"])
def test_float32_span_values_match_the_reference(arch: str) -> None:
    """The float32 chunked scans stay within float32 rounding of the float64 reference."""
    model = tiny(arch)
    index = mamba_layers(model)[0]
    _, parts, residual = reference_of(arch, index)
    x_in = captured64(arch)[1][index][0].float()
    weights = torch.linspace(-1.0, 2.0, N_TOKENS)
    want = torch.einsum("m,hmnd->hnd", weights.double(), parts)
    for chunk in (3, 64):
        mixing = Mamba2Mixing.from_branch(mamba2_branch(model.model.layers[index]), x_in, chunk=chunk)
        values, out_weight = mixing.span_values(torch.arange(N_TOKENS), weights)
        assert relative(torch.einsum("hnp,hpd->hnd", values, out_weight).double(), want) <= 1e-5
        assert relative(mixing.residual(torch.arange(N_TOKENS)).double(), residual) <= 1e-5


# --- refusals -------------------------------------------------------------------------------------------------


def test_refusals() -> None:
    granite = tiny("granitemoehybrid")
    with pytest.raises(UnsupportedArchitectureError, match="attention layer"):
        mamba2_branch(granite.model.layers[1])
    nemotron = tiny("nemotron_h")
    with pytest.raises(UnsupportedArchitectureError, match="'full_attention' block"):
        mamba2_branch(nemotron.model.layers[1])
    with pytest.raises(UnsupportedArchitectureError, match="not a decoder layer whose Mamba-2 mixer"):
        mamba2_branch(nn.Linear(2, 2))
    mixer = nemotron.model.layers[0].mixer
    mixer.activation = "relu"
    try:
        with pytest.raises(UnsupportedArchitectureError, match="activation is 'relu'"):
            mamba2_branch(nemotron.model.layers[0])
    finally:
        mixer.activation = "silu"
    mixer.train()
    try:
        with pytest.raises(UnsupportedArchitectureError, match="training mode"):
            mamba2_branch(nemotron.model.layers[0])
    finally:
        mixer.eval()
    assert [is_mamba2_layer(layer) for layer in nemotron.model.layers] == [True, False, False, True]

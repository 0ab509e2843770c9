r"""Gated DeltaNet (Qwen3-Next, Qwen3.5, Qwen3.5-MoE linear-attention layers): an exact per-source split.

The layer, as the Hugging Face modules compute it (``*GatedDeltaNet.forward`` and the pure-torch
``torch_recurrent_gated_delta_rule``), for the normed input ``x̂_t = input_layernorm(x_in_t)``:

1. Projections: ``u_t = W_qkv x̂_t`` (the channels ``[q | k | v]``, ``2·H_k·d_k + H_v·d_v`` of them),
   ``z_t = W_z x̂_t`` ``[H_v, d_v]``, ``b_t = W_b x̂_t``, ``a_t = W_a x̂_t`` ``[H_v]``. Qwen3-Next fuses
   them (``in_proj_qkvz``, ``in_proj_ba``, grouped per key head and reordered by the module's own
   ``fix_query_key_value_ordering``); Qwen3.5 has four separate projections. Neither has biases.
2. A depthwise causal convolution of kernel K (4) and SiLU on every channel c of u:
   ``p_t = Σ_{λ=0}^{K−1} c_λ ⊙ u_{t−λ} (+ b_conv)``, ``y_t = silu(p_t)``, with ``c_λ`` the tap that
   multiplies the input λ steps back (``conv1d.weight[:, 0, K−1−λ]``); then ``y_t = [q_t | k_t | v_t]``.
3. ``q`` and ``k`` are l2-normalised per head (``x / sqrt(Σx² + 1e−6)``), q is scaled by ``d_k^{−1/2}``,
   and each key head serves ``H_v / H_k`` consecutive value heads. Per value head h:
   ``β_t = σ(b_t)``, ``g_t = −exp(A_log) · softplus(a_t + dt_bias)`` (so ``e^{g_t} ∈ (0, 1]``).
4. The gated delta rule, state ``S ∈ R^{d_k × d_v}``:
   ``S_t = e^{g_t} S_{t−1} + β_t k_t (v_t − e^{g_t} S_{t−1}ᵀ k_t)ᵀ = T_t S_{t−1} + β_t k_t v_tᵀ`` with the
   symmetric transition ``T_t = e^{g_t} (I − β_t k_t k_tᵀ)``; the read-out is ``o_t = S_tᵀ q_t`` ``[d_v]``.
5. ``RMSNormGated`` per head (norm first, then the gate): ``y_ih = w ⊙ o_ih / rms(o_ih) ⊙ silu(z_ih)``;
   then ``out_proj`` (``W^h [d_v, D]`` per head), and the decoder adds it to ``x_in``.

**The mixing matrix.** Unrolling step 4 from ``S_{−1} = 0``:
``S_i = Σ_{j≤i} Φ(j, i) β_j k_j v_jᵀ`` with ``Φ(j, i) = T_i T_{i−1} ⋯ T_{j+1}`` (``Φ(i, i) = I``), so

    o_i = Σ_{j≤i} A[i, j] v_j,      A[i, j] = β_j k_jᵀ Φ(j, i)ᵀ q_i = β_j q_iᵀ Φ(j, i) k_j        (per head).

A depends on q, k, β and g only: like softmax probabilities they are quantities of the context and held
at their forward values; o is then exactly linear in the value vectors. The output norm is linear in o
once its per-sink, per-channel scale ``s_ih = w ⊙ silu(z_ih) / rms(o_ih)`` ``[d_v]`` is frozen (as every
norm scale is), so ``out_i = Σ_h (s_ih ⊙ Σ_j A_h[i, j] v_hj) W^h`` (+ ``out_proj`` bias, none in these
models, kept with the residual).

**Through the convolution.** ``silu(p) = p · σ(p)``, so each value channel is
``v_j = σ(p_j) ⊙ p_j = Σ_λ σ(p_j) ⊙ c_λ ⊙ u_{j−λ} + σ(p_j) ⊙ b_conv``: an exact split of v_j over the
tokens of its window, linear in the projected inputs u once the ratio ``r_j = silu(p_j)/p_j = σ(p_j)``
(a function of token j's own pre-activation) is frozen. The ratio needs no division, and its ``p → 0``
limit 1/2 comes out by itself. By default (``conv_attribution="token"``) value parts are attributed to
the token t whose projection ``u_t`` they carry; ``"position"`` attributes the whole ``v_j`` to position j
(the state-space view, ignoring the convolution). A convolution bias belongs to no token: its share
``Σ_h (s_ih ⊙ Σ_j A_h[i, j] r_hj ⊙ b_conv,h) W^h`` stays with the residual in both modes. The q and k
channels pass through the same convolution, but like the keys of softmax attention they only shape A.
So, per head h, sink i and source token t:

    part[h, i, t] = (s_ih ⊙ Σ_{λ=0}^{K−1} A_h[i, t+λ] r_{h,t+λ} ⊙ c_{hλ} ⊙ u_{ht}) W^h,
    x_in_i + out_i = Σ_{h,t} part[h, i, t] + residual_i.

**Span aggregation without an N×N matrix.** For sinks with weights ``w_i`` (and ``w_i = 0`` elsewhere)
all that is needed per head is ``E_j = Σ_i w_i A[i, j] s_i`` ``[d_v]``; the convolution split afterwards
is local (``effective_values[t] = Σ_λ E_{t+λ} ⊙ r_{t+λ} ⊙ c_λ ⊙ u_t``). Write

    E_j = β_j Σ_{i≥j} (q_iᵀ Φ(j, i) k_j) w_i s_i = β_j U_jᵀ k_j,    U_j = Σ_{i≥j} Φ(j, i)ᵀ q_i (w_i s_i)ᵀ  [d_k, d_v].

Because ``Φ(j, i) = Φ(j+1, i) T_{j+1}`` for ``i > j`` and ``T`` is symmetric,

    U_j = q_j (w_j s_j)ᵀ + T_{j+1} U_{j+1}
        = q_j (w_j s_j)ᵀ + e^{g_{j+1}} (U_{j+1} − β_{j+1} k_{j+1} (k_{j+1}ᵀ U_{j+1})),

from ``U_{last sink + 1} = 0`` backwards: one rank-1 injection, one rank-1 correction and a decay per
step, O(N·d_k·d_v) per head and span whatever the number of sinks. (It is the adjoint of the forward
recurrence: the forward pass pushes values into the state, this one pulls the weighted read-outs back.)
The rows of A for individual sinks follow the same recurrence with a vector in place of U:
``ρ_j = T_{j+1} ρ_{j+1} + [j = i] q_i``, ``A[i, j] = β_j k_jᵀ ρ_j``, O(N·d_k) per head and sink, batched
over a chunk of sinks (``rows``); ``token_values`` builds each sink's parts from them.

**Two ways to run the recurrences** (``recurrence=``). ``"loop"``: the recurrences above, one token per
step, in the compute dtype (float64 for a float64 model): the exact, obviously-correct path, but N small
steps per layer. ``"chunked"`` (default): ``v ↦ o = A v`` is linear, and ``kernels.delta_rule.DeltaRule`` writes
it in the model's own 64-token blocks with everything that does not depend on v (the blocks' triangular
inverses, decayed queries and keys) computed once per layer; ``Aᵀ y`` runs the same steps backwards. ``E``
(y = ``w_i s_i`` at the sinks) and the rows (one one-hot column of y per sink) then cost a few matmuls per
block, for every trace and hop of a Run. Same maths, in the compute dtype; the tests check the two agree.

Everything is recomputed from the captured ``x_in`` with the model's own modules (norm, projections,
``fix_query_key_value_ordering``, ``l2norm``) and accumulated in float32 (float64 for a float64 model).
Refused, with the reason: any other activation than SiLU (the ratio split relies on ``silu(p)/p = σ(p)``),
value heads that are not a multiple of key heads, and projection layouts other than the two above.
"""

from __future__ import annotations

import functools
import sys
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedArchitectureError
from ..kernels.delta_rule import DeltaRule
from .gated_attention import compute_dtype

ConvAttribution = Literal["token", "position"]
Recurrence = Literal["loop", "chunked"]


def _l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


class GatedDeltaNetLayer:
    """One Gated DeltaNet layer, split exactly over value heads and source tokens.

    ``layer`` is the decoder layer (``input_layernorm`` and ``linear_attn``), ``x_in [N, D]`` the residual
    entering it. ``conv_attribution``: "token" (default) or "position"; ``recurrence``: "chunked"
    (default) or "loop"; see the module docstring.
    """

    def __init__(
        self,
        layer: nn.Module,
        x_in: torch.Tensor,
        *,
        conv_attribution: ConvAttribution = "token",
        recurrence: Recurrence = "chunked",
    ) -> None:
        mixer = getattr(layer, "linear_attn", None)
        if mixer is None:
            raise UnsupportedArchitectureError("gated DeltaNet: the layer has no linear_attn module")
        if conv_attribution not in ("token", "position"):
            raise ValueError(f"conv_attribution must be 'token' or 'position', not {conv_attribution!r}")
        if recurrence not in ("loop", "chunked"):
            raise ValueError(f"recurrence must be 'loop' or 'chunked', not {recurrence!r}")
        if mixer.activation not in ("silu", "swish"):
            raise UnsupportedArchitectureError(
                f"gated DeltaNet: the convolution activation is {mixer.activation!r}; the exact split of the values "
                "over the convolution window relies on silu(p) = p·σ(p)"
            )
        norm = mixer.norm
        if getattr(norm, "activation", "silu") != "silu" or not type(norm).__name__.endswith("RMSNormGated"):
            raise UnsupportedArchitectureError(
                f"gated DeltaNet: the output norm is {type(norm).__name__}, not an RMSNormGated with a SiLU gate"
            )
        self.num_k_heads, self.num_v_heads = int(mixer.num_k_heads), int(mixer.num_v_heads)  # H_k, H_v
        self.key_dim, self.value_dim = int(mixer.head_k_dim), int(mixer.head_v_dim)  # d_k, d_v
        if self.num_v_heads % self.num_k_heads:
            raise UnsupportedArchitectureError(
                f"gated DeltaNet: {self.num_v_heads} value heads are not a multiple of {self.num_k_heads} key heads"
            )
        self.layer, self.mixer = layer, mixer
        self.conv_attribution: ConvAttribution = conv_attribution
        self.recurrence: Recurrence = recurrence
        parameter = mixer.out_proj.weight
        self.model_dtype = parameter.dtype
        self.dtype = dtype = compute_dtype(parameter.dtype)
        self.model_x_in = x_in.detach().to(device=parameter.device, dtype=parameter.dtype)  # [N, D]
        self.x_in = self.model_x_in.to(dtype)  # [N, D]
        self.length = n = int(x_in.shape[0])  # N
        hv, hk, dk, dv = self.num_v_heads, self.num_k_heads, self.key_dim, self.value_dim

        with torch.inference_mode():
            self._hidden = layer.input_layernorm(self.model_x_in)  # [N, D]
            projected, z, b, a = self._projections(self._hidden)  # [N, conv], [N, H_v, d_v], [N, H_v], [N, H_v]
        projected = projected.to(dtype)
        # causal depthwise convolution, written out per lag: p_t = Σ_λ c_λ ⊙ u_{t−λ} (+ bias)
        weight = mixer.conv1d.weight.detach()[:, 0, :].to(dtype)  # [conv, K]
        kernel = weight.shape[-1]
        self.taps = weight.flip(-1).T.contiguous()  # [K, conv]: taps[λ] multiplies u_{t−λ}
        conv_bias = mixer.conv1d.bias
        self.conv_bias = None if conv_bias is None else conv_bias.detach().to(dtype)  # [conv]
        pre = torch.zeros_like(projected)  # [N, conv]
        for lag in range(min(kernel, n)):
            pre[lag:] += self.taps[lag] * projected[: n - lag]
        if self.conv_bias is not None:
            pre += self.conv_bias
        post = F.silu(pre)  # [N, conv]
        q_end, k_end = hk * dk, 2 * hk * dk
        repeat = hv // hk
        l2norm = getattr(sys.modules[type(mixer).__module__], "l2norm", _l2norm)
        queries = l2norm(post[:, :q_end].reshape(n, hk, dk).repeat_interleave(repeat, dim=1), eps=1e-6)
        keys = l2norm(post[:, q_end:k_end].reshape(n, hk, dk).repeat_interleave(repeat, dim=1), eps=1e-6)
        self.queries = queries.transpose(0, 1) * dk**-0.5  # l2-normed, then scaled: [H_v, N, d_k]
        self.keys = keys.transpose(0, 1).contiguous()  # [H_v, N, d_k]
        self.values = post[:, k_end:].reshape(n, hv, dv).transpose(0, 1).contiguous()  # [H_v, N, d_v]
        # the value channels' pieces of the convolution split
        self.value_inputs = projected[:, k_end:].reshape(n, hv, dv).transpose(0, 1).contiguous()  # u: [H_v, N, d_v]
        self.value_ratio = torch.sigmoid(pre[:, k_end:]).reshape(n, hv, dv).transpose(0, 1).contiguous()  # r
        self.value_taps = self.taps[:, k_end:].reshape(kernel, hv, dv).transpose(0, 1).contiguous()  # [H_v, K, d_v]
        self.beta = torch.sigmoid(b.to(dtype)).T.contiguous()  # [H_v, N]
        g = -mixer.A_log.detach().to(dtype).exp() * F.softplus(a.to(dtype) + mixer.dt_bias.detach().to(dtype))
        self.log_decay = g.T.contiguous()  # g: [H_v, N]
        self.decay = self.log_decay.exp()  # e^{g}: [H_v, N]
        # the model's read-out o and the frozen per-sink, per-channel scale of the gated norm
        self.read_out = self._delta_rule(self.values)  # o: [H_v, N, d_v]
        eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
        inverse_rms = torch.rsqrt(self.read_out.pow(2).mean(-1, keepdim=True) + eps)  # [H_v, N, 1]
        gate = F.silu(z.to(dtype)).transpose(0, 1)  # [H_v, N, d_v]
        self.sink_scale = norm.weight.detach().to(dtype) * inverse_rms * gate  # s: [H_v, N, d_v]
        out_proj = mixer.out_proj
        out = out_proj.weight.detach().to(dtype)  # [D, H_v·d_v]
        self.out_weight = out.T.reshape(hv, dv, out.shape[0]).contiguous()  # [H_v, d_v, D]
        self.out_bias = None if out_proj.bias is None else out_proj.bias.detach().to(dtype)  # [D]
        self._bias_update: torch.Tensor | None = None

    # extraction ---------------------------------------------------------------------------------
    def _projections(self, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``u [N, 2·H_k·d_k + H_v·d_v]`` (channels [q | k | v], heads in order), ``z [N, H_v, d_v]``,
        ``b [N, H_v]`` and ``a [N, H_v]`` from the model's own projections."""
        mixer, n = self.mixer, hidden.shape[0]
        if hasattr(mixer, "in_proj_qkvz") and hasattr(mixer, "fix_query_key_value_ordering"):  # Qwen3-Next
            query, key, value, z, b, a = mixer.fix_query_key_value_ordering(
                mixer.in_proj_qkvz(hidden[None]), mixer.in_proj_ba(hidden[None])
            )
            projected = torch.cat([x.reshape(n, -1) for x in (query, key, value)], dim=-1)
            return projected, z.reshape(n, self.num_v_heads, self.value_dim), b.reshape(n, -1), a.reshape(n, -1)
        if all(hasattr(mixer, p) for p in ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")):  # Qwen3.5
            z = mixer.in_proj_z(hidden).reshape(n, self.num_v_heads, self.value_dim)
            return mixer.in_proj_qkv(hidden), z, mixer.in_proj_b(hidden), mixer.in_proj_a(hidden)
        raise UnsupportedArchitectureError(
            f"gated DeltaNet: {type(mixer).__name__} has neither in_proj_qkvz/in_proj_ba (Qwen3-Next) nor "
            "in_proj_qkv/z/b/a (Qwen3.5); its projection layout is unknown"
        )

    # recurrences --------------------------------------------------------------------------------
    def _delta_rule(self, values: torch.Tensor) -> torch.Tensor:
        """Forward gated delta rule on ``values [H_v, N, d_v]`` (this layer's q, k, β, g) -> ``o``, same shape."""
        if self.recurrence == "chunked":
            return self._chunked(values)
        hv, n = self.num_v_heads, self.length
        state = values.new_zeros(hv, self.key_dim, self.value_dim)  # S: [H_v, d_k, d_v]
        out = torch.empty_like(values)
        for t in range(n):
            key = self.keys[:, t]  # [H_v, d_k]
            # S ← T_t S + β_t k_t v_tᵀ = e^{g_t} (S − β_t k_t (k_tᵀ S)) + β_t k_t v_tᵀ
            beta = self.beta[:, t, None, None]
            state = self.decay[:, t, None, None] * (state - beta * _outer(key, _read(state, key)))
            state = state + beta * _outer(key, values[:, t])
            out[:, t] = _read(state, self.queries[:, t])  # o_t = S_tᵀ q_t
        return out

    def _adjoint(self, injections: torch.Tensor, last: int) -> torch.Tensor:
        """``E_j = β_j U_jᵀ k_j`` for the backward recurrence ``U_j = q_j injections_jᵀ + T_{j+1} U_{j+1}``.

        injections: ``[H_v, N, d_v]`` (``w_j s_j``, zero off the sinks) -> ``E [H_v, N, d_v]`` (zero past ``last``).
        """
        if self.recurrence == "chunked":
            return self._chunked_transpose(injections)
        state = injections.new_zeros(self.num_v_heads, self.key_dim, self.value_dim)  # U: [H_v, d_k, d_v]
        out = torch.zeros_like(injections)
        for j in range(last, -1, -1):
            if j < last:  # U ← T_{j+1} U = e^{g_{j+1}} (U − β_{j+1} k_{j+1} (k_{j+1}ᵀ U))
                key = self.keys[:, j + 1]
                state = self.decay[:, j + 1, None, None] * (
                    state - self.beta[:, j + 1, None, None] * _outer(key, _read(state, key))
                )
            state = state + _outer(self.queries[:, j], injections[:, j])
            out[:, j] = self.beta[:, j, None] * _read(state, self.keys[:, j])
        return out

    def _chunked(self, values: torch.Tensor) -> torch.Tensor:
        """``o = A v`` per head in chunked form (``DeltaRule``): ``[H_v, N, W]`` -> ``[H_v, N, W]``."""
        return self._operator.forward(values.to(self.dtype))

    def _chunked_transpose(self, cotangent: torch.Tensor) -> torch.Tensor:
        """``Aᵀ y`` per head, ``[H_v, N, W]`` -> ``[H_v, N, W]``: the chunked forward's steps run backwards.
        E = β ⊙ (U k) of ``_adjoint`` is exactly this, column by column."""
        return self._operator.transpose(cotangent.to(self.dtype))

    @functools.cached_property
    def _operator(self) -> DeltaRule:
        """The value-independent chunk factors of this layer's mixing, computed once."""
        return DeltaRule(self.queries, self.keys, self.beta, self.log_decay)

    @torch.inference_mode()
    def rows(self, sinks: torch.Tensor) -> torch.Tensor:
        """The mixing coefficients ``A_h[i, j]`` of each sink: ``[H_v, C, N]`` (zero for j > i)."""
        sinks = sinks.to(self.keys.device)
        hv, c = self.num_v_heads, sinks.shape[0]
        rows = self.keys.new_zeros(hv, c, self.length)
        if c == 0:
            return rows
        if self.recurrence == "chunked":  # row i of A is Aᵀ e_i: one cotangent column per sink
            cotangent = self.keys.new_zeros(hv, self.length, c)  # [H_v, N, C]
            cotangent[:, sinks, torch.arange(c, device=sinks.device)] = 1.0
            rows = self._chunked_transpose(cotangent).transpose(1, 2)  # [H_v, C, N]
            sources = torch.arange(self.length, device=sinks.device)
            return rows * (sources[None, :] <= sinks[:, None])  # exact zeros after the sink
        last = int(sinks.max())
        state = self.keys.new_zeros(hv, c, self.key_dim)  # ρ per sink: [H_v, C, d_k]
        for j in range(last, -1, -1):
            if j < last:  # ρ ← T_{j+1} ρ
                key = self.keys[:, j + 1, None, :]  # [H_v, 1, d_k]
                along = (state * key).sum(-1, keepdim=True)  # [H_v, C, 1]
                state = self.decay[:, j + 1, None, None] * (state - self.beta[:, j + 1, None, None] * along * key)
            starting = sinks == j  # [C]
            if bool(starting.any()):
                state[:, starting] += self.queries[:, j, None, :]
            rows[:, :, j] = self.beta[:, j, None] * (state * self.keys[:, j, None, :]).sum(-1)
        return rows

    # the decomposition ---------------------------------------------------------------------------
    def _split(self, coefficients: torch.Tensor) -> torch.Tensor:
        """``coefficients [..., H_v, N, d_v]`` (``Σ_i w_i A[i, j] s_i`` per position j) -> effective values of
        the same shape: through the convolution to the source tokens, or at position j."""
        if self.conv_attribution == "position":
            if self.conv_bias is None:
                return coefficients * self.values
            return coefficients * (self.values - self.value_ratio * self._value_bias()[:, None, :])
        weighted = coefficients * self.value_ratio  # E_j ⊙ r_j: [..., H_v, N, d_v]
        effective = torch.zeros_like(weighted)
        n = self.length
        for lag in range(min(self.value_taps.shape[1], n)):  # source t = j − λ gets E_j ⊙ r_j ⊙ c_λ ⊙ u_t
            effective[..., : n - lag, :] += weighted[..., lag:, :] * self.value_taps[:, lag, None, :]
        return effective * self.value_inputs

    def _value_bias(self) -> torch.Tensor:
        """The convolution bias of the value channels, ``[H_v, d_v]``."""
        assert self.conv_bias is not None
        k_end = 2 * self.num_k_heads * self.key_dim
        return self.conv_bias[k_end:].reshape(self.num_v_heads, self.value_dim)

    @torch.inference_mode()
    def span_values(self, sinks: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``effective_values [H_v, N, d_v]`` and ``out_weight [H_v, d_v, D]`` with
        ``effective_values[h, t] @ out_weight[h] = Σ_i w_i part[h, i, t]``, by the backward recurrence."""
        sinks = sinks.to(self.keys.device)
        weights = weights.to(device=self.keys.device, dtype=self.dtype)  # [M]
        injections = torch.zeros_like(self.values)  # w_i s_i at the sinks: [H_v, N, d_v]
        if sinks.shape[0] == 0:
            return injections, self.out_weight
        injections.index_add_(1, sinks, weights[None, :, None] * self.sink_scale[:, sinks])
        return self._split(self._adjoint(injections, int(sinks.max()))), self.out_weight

    @torch.inference_mode()
    def token_values(self, sinks: torch.Tensor) -> torch.Tensor:
        """Each sink's own effective values ``[H_v, C, N, d_v]`` (``@ out_weight`` gives its parts)."""
        sinks = sinks.to(self.keys.device)
        rows = self.rows(sinks).transpose(0, 1)  # [C, H_v, N]
        scale = self.sink_scale[:, sinks].transpose(0, 1)  # s_i: [C, H_v, d_v]
        return self._split(rows[..., None] * scale[:, :, None, :]).transpose(0, 1)  # [H_v, C, N, d_v]

    def token_parts(self, sink: int) -> torch.Tensor:
        """Per-head, per-source parts of one sink's update: ``[H_v, N, D]``."""
        values = self.token_values(torch.tensor([int(sink)]))[:, 0]  # [H_v, N, d_v]
        return torch.bmm(values, self.out_weight)  # [H_v, N, D]

    def residual(self, sinks: torch.Tensor) -> torch.Tensor:
        """What stays with the residual: ``x_in_i``, the ``out_proj`` bias and the convolution bias's share. [C, D]."""
        sinks = sinks.to(self.x_in.device)
        residual = self.x_in[sinks]
        if self.out_bias is not None:
            residual = residual + self.out_bias
        if self.conv_bias is not None:
            residual = residual + self._conv_bias_update()[sinks]
        return residual

    @torch.inference_mode()
    def _conv_bias_update(self) -> torch.Tensor:
        """``Σ_h (s_ih ⊙ Σ_j A_h[i, j] r_hj ⊙ b_conv,h) W^h`` for every sink: ``[N, D]`` (the forward recurrence)."""
        if self._bias_update is None:
            read = self._delta_rule(self.value_ratio * self._value_bias()[:, None, :])  # [H_v, N, d_v]
            self._bias_update = torch.einsum("hnv,hvd->nd", read * self.sink_scale, self.out_weight)
        return self._bias_update


def _outer(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Per-head outer products: ``[H, a] × [H, b] -> [H, a, b]``."""
    return left[:, :, None] * right[:, None, :]


def _read(state: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """``stateᵀ vector`` per head: ``[H, d_k, d_v] × [H, d_k] -> [H, d_v]``."""
    return torch.einsum("hkv,hk->hv", state, vector)

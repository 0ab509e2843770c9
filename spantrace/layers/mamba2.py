"""Mamba-2 mixers split exactly over source tokens (Nemotron-H, Granite 4.0-H, Bamba, Falcon-H1).

A Mamba-2 layer mixes tokens through a selective state-space recurrence instead of softmax attention.
Like attention, its update to sink ``i`` is linear in per-source "value" vectors once a few quantities
computed from the context are held at their forward-pass values; this module writes that split down
and computes it from the Hugging Face layer and the captured residual ``x_in [N, D]`` entering it.

The layer (what the model computes)
-----------------------------------
Positions ``0…N−1``; ``H`` heads of ``P`` channels (``d_inner = H·P``); state size ``n``; ``G`` groups of
B/C shared by ``H/G`` consecutive heads (head ``h`` reads group ``h // (H/G)``); conv kernel ``K`` (4).

1. Per token ``t``: ``π_t = in_proj(μ_in · norm(x_in_t)) ⊙ μ`` (``μ_in``, ``μ`` are Falcon-H1's
   ``ssm_in_multiplier`` and ``mup_vector``, else 1), split into the gate ``z_t [H·P]``, the conv input
   ``ξ_t = (u_t [H·P], b̃_t [G·n], c̃_t [G·n])`` and the raw step ``δ_t [H]``.
2. A depthwise causal conv and SiLU: ``a_j = Σ_{k<K} w_k ⊙ ξ_{j−K+1+k} + β`` (``ξ_t = 0`` for ``t < 0``),
   ``x_j = silu(a^u_j)`` (the "values"), ``B_j = silu(a^b_j)``, ``C_j = silu(a^c_j)``.
3. ``Δ_{h,j} = clamp(softplus(δ_{h,j} + dt_bias_h), time_step_limit)``, ``A_h = −exp(A_log_h)`` and the
   per-step log-decay ``λ_{h,t} = Δ_{h,t} A_h ≤ 0``. Per head (the scan of the reference kernel,
   ``segment_sum`` giving ``Σ_{t=j+1..i} λ_t``):

       y_{h,i} = Σ_{j≤i} M_h[i, j] x_{h,j},
       M_h[i, j] = (C_{g,i} · B_{g,j}) · Δ_{h,j} · exp(Σ_{t=j+1..i} λ_{h,t}) + D_h [i = j].

4. Gated RMSNorm, per norm group (``n_norm_groups`` contiguous blocks of ``d_inner``; a block may span
   several heads): Nemotron-H, Granite, Bamba and Falcon-H1 by default gate first,
   ``v_i = y_i ⊙ silu(z_i)``, ``o_i = γ ⊙ v_i · rsqrt(mean_group(v_i²) + ε)``; Falcon-H1 with
   ``mamba_norm_before_gate`` normalises ``y_i`` and gates after; Falcon-H1 without ``mamba_rms_norm`` only
   gates. In every case ``o_i = s_i ⊙ y_i`` with a per-sink, per-channel scale ``s_i [H·P]`` (gain ×
   group rms scale × ``silu(z_i)``).
5. ``out_i = W_out o_i + b_out`` and the residual add ``x_i^out = x_in_i + ρ · out_i`` (``ρ``: Granite's
   ``residual_multiplier``, Falcon-H1's ``ssm_out_multiplier``, else 1). Falcon-H1 adds its attention branch
   to the same residual in the same layer (see "Falcon-H1" below).

Frozen (computed from the context, held at forward values, like attention weights and norm scales):
``s_i`` (gate, norm scale, gain), ``Δ_j``, ``B_j``, ``C_i`` and the SiLU ratio ``σ(a^u_j)`` below.
Everything else is exact.

The split over source tokens
----------------------------
``silu(a) = a · σ(a)``, so ``x_j = σ(a^u_j) ⊙ a^u_j`` exactly, and ``a^u_j`` is linear in the projected values
``u_t`` of the tokens ``t = j−K+1…j``::

    x_j = Σ_{t=j−K+1..j} σ(a^u_j) ⊙ w_{t−j+K−1} ⊙ u_t  +  σ(a^u_j) ⊙ β^u.

``σ(a) = silu(a)/a`` with its limit ``1/2`` at ``a = 0`` built in: no division, nothing to guard. The
value stream is attributed through the conv to the tokens ``t`` whose ``u_t`` it reads (the default and
only mode): the "value" of source ``t`` is ``u_t``, its own projected features (in-proj bias included, as a
V bias is part of an attention value). The conv bias ``β^u`` belongs to no token (it is added at every
position whatever the input), so, like an output bias, it stays with the residual, passed through the same
frozen mixing. With ``c_h[i, j, t] = M_h[i, j] σ(a^u_{h,j}) ⊙ w_{h, t−j+K−1}`` (``t ≤ j ≤ min(i, t+K−1)``)::

    part[h, i, t] = ρ · W_out^h ( s_{h,i} ⊙ u_{h,t} ⊙ Σ_j c_h[i, j, t] )            [D]
    residual_i    = x_in_i + ρ b_out + ρ Σ_h W_out^h ( s_{h,i} ⊙ Σ_j M_h[i, j] σ(a^u_{h,j}) ⊙ β^u_h )

and ``Σ_{h,t} part[h, i, t] + residual_i = x_i^out`` exactly (the D skip is the ``i = j`` term of ``M``, so it
reaches the tokens ``i−K+1…i`` through the conv like every other term). Per head and source the part is a
``P``-vector of "effective values" times ``W_out^h``; unlike attention the mixing weight is per channel,
not one scalar per (head, sink, source).

Span aggregation in one backward pass
-------------------------------------
For sink weights ``w_i`` (zero off the span), with ``q_i = w_i s_{h,i}``::

    Z[h, t] = Σ_i w_i part[h, i, t] = ρ W_out^h ( u_{h,t} ⊙ Σ_{k<K} w_{h,k} ⊙ (σ(a^u_h) ⊙ R_h)_{t+K−1−k} )
    R_{h,j} = Σ_i M_h[i, j] q_i = Δ_{h,j} U_{h,j} B_{g,j} + D_h q_j
    U_{h,j} = Σ_{i≥j} exp(Σ_{t=j+1..i} λ_{h,t}) q_i C_{g,i}ᵀ          [P, n]
            = q_j C_{g,j}ᵀ + exp(λ_{h,j+1}) U_{h,j+1},   U_{h,N} = 0,

(positions past ``N−1`` contribute 0 in the conv sum). That is the transposed scan: O(N·P·n) per head and
no N×N matrix. It runs in chunks of ``Q`` positions from the last chunk back: inside a chunk the
``Q×Q`` block ``(C_i·B_j) exp(Σ_{t=j+1..i} λ_t)`` (sums taken directly, not as differences of a long
cumulative sum), between chunks the carried ``V = Σ_{i≥c1} exp(Σ_{t=c1..i} λ_t) q_i C_iᵀ``. The forward
scan (``y``, needed for the norm scale, and the conv-bias stream) is the same in the other direction.
``span_values`` returns ``effective_values[h, t] = u_{h,t} ⊙ Σ_k …`` ``[H, N, P]`` with
``out_weight = ρ W_out^h`` ``[H, P, D]``, ready for
``kernels.proximity.span_edges(ones, effective_values, out_weight…)``.

Falcon-H1
---------
Each layer runs attention and the Mamba-2 mixer in parallel on the same normed input and adds both to the
residual: ``x_mid = x_in + ρ_ssm · mamba(norm(x_in)) + ρ_attn · attn(μ_attn · norm(x_in))``. The two
branches are additive, so the layer is split exactly as the union of the mixer's heads (this module, with
``ρ = ssm_out_multiplier``; ``residual(…, include_x_in=False)`` gives its bias terms alone) and the
attention heads (softmax-attention adapter: ``attention_in_multiplier`` on the input of q/k/v,
``key_multiplier`` on keys, ``attention_out_multiplier`` on the output projection), with ``x_in`` counted once.
The ``mup_vector`` multipliers and ``ssm_in_multiplier`` act on one token's projection only and are applied
here as the model does.

Scope: one unpadded sequence from position 0 (what a capture holds): no cache, no initial state, no padding
mask (the model's padding mask would zero whole positions, which this split does not model).

Refused: conv activations other than SiLU (the split needs ``act(a) = a · φ(a)`` in a closed form), a mixer
in training mode (``checked_branch``); which decoder layers hold a Mamba-2 mixer, and where, is family wiring
(``spantrace.architectures.mamba_hybrid``).

All arithmetic is float32 (float64 for a float64 model), whatever the model dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedArchitectureError
from ..kernels.ssd_scan import DEFAULT_CHUNK, conv_to_sources, forward_scan, transposed_scan

_SILU = frozenset({"silu", "swish"})


@dataclass(frozen=True, eq=False)
class Mamba2Branch:
    """The Mamba-2 branch of one decoder layer: ``x_out = x_in + output_scale · mixer(norm(x_in))``."""

    family: str
    norm: nn.Module  # the pre-mixer norm; its input is x_in
    mixer: nn.Module  # the Hugging Face Mamba-2 mixer
    output_scale: float  # residual_multiplier (Granite), ssm_out_multiplier (Falcon-H1), else 1
    input_scale: float  # ssm_in_multiplier (Falcon-H1), else 1: multiplies the normed input of in_proj
    projection_scale: torch.Tensor | None  # mup_vector (Falcon-H1) [in_proj out]: multiplies in_proj's output
    gated_norm: bool  # False: Falcon-H1 without mamba_rms_norm (o = y ⊙ silu(z), no norm)
    norm_before_gate: bool  # Falcon-H1's mamba_norm_before_gate: o = γ ⊙ rmsnorm(y) ⊙ silu(z)
    parallel_attention: bool  # Falcon-H1: the layer also adds an attention branch to the same residual

    def branch_output(self, x_in: torch.Tensor) -> torch.Tensor:
        """``output_scale · mixer(norm(x_in))`` [N, D] from the model's own modules (its own forward)."""
        normed = self.normed(x_in)
        with torch.inference_mode():
            return self.mixer(normed[None])[0] * self.output_scale

    def normed(self, x_in: torch.Tensor) -> torch.Tensor:
        """The mixer's input ``norm(x_in)`` [N, D] in the model's dtype, as the layer computes it."""
        weight = getattr(self.norm, "weight", None)
        dtype = weight.dtype if weight is not None else next(self.mixer.parameters()).dtype
        with torch.inference_mode():
            return self.norm(x_in.to(device=self.mixer.A_log.device, dtype=dtype))


def checked_branch(branch: Mamba2Branch) -> Mamba2Branch:
    """``branch`` if its mixer is one the split covers; UnsupportedArchitectureError naming what is not."""
    mixer = branch.mixer
    activation = str(getattr(mixer, "activation", "?"))
    if activation not in _SILU:
        raise UnsupportedArchitectureError(
            f"{branch.family}: the Mamba-2 conv activation is {activation!r}; the exact split over the conv window "
            "uses silu(a) = a·σ(a), and no other activation is supported."
        )
    if mixer.training:
        raise UnsupportedArchitectureError(f"{branch.family}: the Mamba-2 mixer is in training mode; call model.eval()")
    conv = mixer.conv1d
    if conv.groups != conv.in_channels or conv.kernel_size[0] != mixer.conv_kernel_size:
        raise UnsupportedArchitectureError(f"{branch.family}: the Mamba-2 conv is not a depthwise causal conv")
    return branch


# ----------------------------------------------------------------------------------------------------
# The decomposition of one layer
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Mamba2Mixing:
    """One Mamba-2 layer split over source tokens, for one captured sequence (see the module docstring).

    Build it with ``Mamba2Mixing.from_branch(branch, x_in)`` (the family's ``Mamba2Branch`` of the layer).
    All tensors float32 (float64 for float64 models).
    """

    branch: Mamba2Branch
    x_in: torch.Tensor  # [N, D]
    values: torch.Tensor  # u [H, N, P]: projected value stream before the conv (in-proj bias included)
    conv_weight: torch.Tensor  # [H, P, K] taps on the value channels
    conv_bias: torch.Tensor | None  # β^u [H, P]
    silu_ratio: torch.Tensor  # σ(a^u) [H, N, P] = silu(a)/a, frozen
    dt: torch.Tensor  # Δ [H, N], frozen
    log_decay: torch.Tensor  # λ = Δ·A [H, N]
    b: torch.Tensor  # B [H, N, n] (expanded from groups), frozen
    c: torch.Tensor  # C [H, N, n], frozen
    skip: torch.Tensor  # D [H]
    sink_scale: torch.Tensor  # s [H, N, P]: gain × group rms scale × silu(z), frozen
    out_weight: torch.Tensor  # ρ·W_out per head [H, P, D]
    out_bias: torch.Tensor | None  # ρ·b_out [D]
    scan_output: torch.Tensor  # y [H, N, P], the SSM output (conv bias included)
    bias_output: torch.Tensor  # the part of y that comes from the conv bias [H, N, P]
    chunk: int

    @classmethod
    @torch.inference_mode()
    def from_branch(cls, branch: Mamba2Branch, x_in: torch.Tensor, *, chunk: int = DEFAULT_CHUNK) -> Mamba2Mixing:
        mixer = branch.mixer
        heads, head_dim = mixer.num_heads, mixer.head_dim
        inner, groups, state = mixer.intermediate_size, mixer.n_groups, mixer.ssm_state_size
        if heads * head_dim != inner or heads % groups:
            raise UnsupportedArchitectureError(
                f"{branch.family}: Mamba-2 heads ({heads}×{head_dim}) do not tile d_inner {inner} "
                f"or do not divide into {groups} groups"
            )
        # float32 whatever the model's dtype, float64 for a float64 model
        compute = torch.float64 if mixer.in_proj.weight.dtype == torch.float64 else torch.float32
        length = x_in.shape[0]

        # 1. projection, in the model's dtype by the model's own modules (one token at a time: exact per source)
        normed = branch.normed(x_in)
        projected = mixer.in_proj(normed * branch.input_scale if branch.input_scale != 1.0 else normed)
        if branch.projection_scale is not None:
            projected = projected * branch.projection_scale.to(projected.dtype)
        projected = projected.detach().to(compute)  # [N, 2·d_inner + 2·G·n + H]
        gate, stream, dt_raw = projected.split([inner, mixer.conv_dim, heads], dim=-1)

        # 2. depthwise causal conv and SiLU on (u, B, C)
        kernel = mixer.conv_kernel_size
        weight = mixer.conv1d.weight.detach().to(compute).reshape(mixer.conv_dim, kernel)  # [conv_dim, K]
        bias = mixer.conv1d.bias.detach().to(compute) if mixer.conv1d.bias is not None else None
        padded = F.pad(stream, (0, 0, kernel - 1, 0))  # [N + K − 1, conv_dim]
        pre = sum(weight[:, k] * padded[k : k + length] for k in range(kernel))  # [N, conv_dim] without bias
        if bias is not None:
            pre = pre + bias
        activated = F.silu(pre)
        x_post, b_post, c_post = activated.split([inner, groups * state, groups * state], dim=-1)
        repeat = heads // groups
        b_heads = b_post.reshape(length, groups, state).transpose(0, 1).repeat_interleave(repeat, 0)  # [H, N, n]
        c_heads = c_post.reshape(length, groups, state).transpose(0, 1).repeat_interleave(repeat, 0)

        def head_major(t: torch.Tensor) -> torch.Tensor:  # [N, H·P] -> [H, N, P]
            return t.reshape(length, heads, head_dim).transpose(0, 1)

        # 3. step sizes and decays, as the reference scan computes them
        dt = F.softplus(dt_raw + mixer.dt_bias.detach().to(compute))  # [N, H]
        limit = getattr(mixer, "time_step_limit", None)
        if limit is not None:
            dt = dt.clamp(min=float(limit[0]), max=float(limit[1]))
        decay_rate = -torch.exp(mixer.A_log.detach().to(compute))  # A [H]
        dt = dt.transpose(0, 1).contiguous()  # [H, N]
        log_decay = dt * decay_rate[:, None]
        skip = mixer.D.detach().to(compute)

        values = head_major(stream[:, :inner])
        silu_ratio = head_major(torch.sigmoid(pre[:, :inner]))
        scan_output = forward_scan(head_major(x_post), dt, log_decay, b_heads, c_heads, skip, chunk)
        conv_bias = bias[:inner].reshape(heads, head_dim) if bias is not None else None
        if conv_bias is not None:
            bias_stream = silu_ratio * conv_bias[:, None, :]
            bias_output = forward_scan(bias_stream, dt, log_decay, b_heads, c_heads, skip, chunk)
        else:
            bias_output = torch.zeros_like(scan_output)

        # 4. the gated norm's frozen per-sink, per-channel scale
        sink_scale = _gated_norm_scale(branch, scan_output.transpose(0, 1).reshape(length, inner), gate, compute)

        # 5. output projection per head, with the branch's output multiplier folded in
        out_proj = mixer.out_proj
        out_weight = out_proj.weight.detach().to(compute).T.reshape(heads, head_dim, -1)  # [H, P, D]
        out_weight = out_weight * branch.output_scale
        out_bias = out_proj.bias.detach().to(compute) * branch.output_scale if out_proj.bias is not None else None
        return cls(
            branch=branch,
            x_in=x_in.to(device=values.device, dtype=compute),
            values=values,
            conv_weight=weight[:inner].reshape(heads, head_dim, kernel),
            conv_bias=conv_bias,
            silu_ratio=silu_ratio,
            dt=dt,
            log_decay=log_decay,
            b=b_heads,
            c=c_heads,
            skip=skip,
            sink_scale=head_major(sink_scale),
            out_weight=out_weight,
            out_bias=out_bias,
            scan_output=scan_output,
            bias_output=bias_output,
            chunk=chunk,
        )

    # --- sizes ----------------------------------------------------------------------------------------

    @property
    def num_heads(self) -> int:
        return self.values.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.values.shape[1]

    # --- what FlashTrace / IFR need --------------------------------------------------------------------

    def residual(self, sinks: torch.Tensor, *, include_x_in: bool = True) -> torch.Tensor:
        """What stays with the residual at each sink: ``x_in`` (unless ``include_x_in=False``), the output
        bias and the conv bias passed through the frozen mixing. [C, D]."""
        sinks = torch.as_tensor(sinks, device=self.values.device).reshape(-1)
        scaled = self.sink_scale[:, sinks] * self.bias_output[:, sinks]  # [H, C, P]
        residual = torch.einsum("hcp,hpd->cd", scaled, self.out_weight)
        if self.out_bias is not None:
            residual = residual + self.out_bias
        return residual + self.x_in[sinks] if include_x_in else residual

    def mixing_rows(self, sinks: torch.Tensor) -> torch.Tensor:
        """``M_h[i, j]`` for the sinks ``i`` and every source position ``j``: [H, C, N] (0 for j > i)."""
        sinks = torch.as_tensor(sinks, device=self.values.device).reshape(-1)
        length = self.num_tokens
        positions = torch.arange(length, device=sinks.device)
        seen = positions[None, :] <= sinks[:, None]  # [C, N]
        # Σ_{t=j+1..i} λ_t: a suffix sum over the sink's own prefix, each taken directly
        lam = self.log_decay[:, None, :].masked_fill(~seen[None], 0.0)  # [H, C, N], λ_t kept for t ≤ i
        through = lam.flip(-1).cumsum(-1).flip(-1)  # [H, C, N]: Σ_{t=j..i}
        after = F.pad(through[..., 1:], (0, 1))  # Σ_{t=j+1..i}
        scores = torch.einsum("hcn,hjn->hcj", self.c[:, sinks], self.b)  # C_i·B_j: [H, C, N]
        rows = scores * self.dt[:, None, :] * after.exp()
        rows = rows.masked_fill(~seen[None], 0.0)
        diagonal = positions[None, :] == sinks[:, None]  # [C, N]
        return rows + self.skip[:, None, None] * diagonal[None]

    def token_values(self, sinks: torch.Tensor) -> torch.Tensor:
        """Per-sink effective values ``[H, C, N, P]``: ``token_values[h, c, t] @ out_weight[h]`` is the exact part
        of source ``t`` through head ``h`` in sink ``sinks[c]`` (O(C·N·H·P), no N×N work beyond C rows)."""
        sinks = torch.as_tensor(sinks, device=self.values.device).reshape(-1)
        rows = self.mixing_rows(sinks)  # [H, C, N]
        per_position = rows[..., None] * self.silu_ratio[:, None] * self.sink_scale[:, sinks][:, :, None]
        return conv_to_sources(per_position, self.conv_weight) * self.values[:, None]  # [H, C, N, P]

    def token_parts(self, sink: int) -> torch.Tensor:
        """``part[h, sink, t]`` for every head and source: [H, N, D]; Σ_{h,t} + residual([sink]) = layer output."""
        return torch.bmm(self.token_values(torch.tensor([int(sink)]))[:, 0], self.out_weight)

    def span_values(self, sinks: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(effective_values [H, N, P], out_weight [H, P, D])`` with
        ``effective_values[h, t] @ out_weight[h] = Σ_m weights[m] · part[h, sinks[m], t]``, by the transposed scan
        (O(N·P·n) per head plus O(N·chunk) for the in-chunk blocks; no N×N matrix). Repeated sinks add up."""
        sinks = torch.as_tensor(sinks, device=self.values.device).reshape(-1)
        per_sink = torch.zeros(self.num_tokens, dtype=self.values.dtype, device=self.values.device)
        per_sink.index_add_(0, sinks, torch.as_tensor(weights).to(per_sink).reshape(-1))  # w [N]
        sink_weights = self.sink_scale * per_sink[None, :, None]  # q = w·s [H, N, P]
        reach = transposed_scan(sink_weights, self.dt, self.log_decay, self.b, self.c, self.skip, self.chunk)
        effective = conv_to_sources(reach * self.silu_ratio, self.conv_weight) * self.values  # [H, N, P]
        return effective, self.out_weight

    # --- checks ----------------------------------------------------------------------------------------

    def mixer_output(self) -> torch.Tensor:
        """This module's recomputation of the branch output ``ρ·mixer(norm(x_in))`` [N, D]."""
        out = torch.einsum("hnp,hpd->nd", self.sink_scale * self.scan_output, self.out_weight)
        return out + self.out_bias if self.out_bias is not None else out

    def rebuild(self, sinks: torch.Tensor | None = None, *, sink_chunk: int = 16) -> torch.Tensor:
        """``Σ_{h,t} part[h, i, t] + residual_i`` for the sinks (default all): [C, D], a few sinks at a time."""
        sinks = torch.arange(self.num_tokens) if sinks is None else torch.as_tensor(sinks).reshape(-1)
        sinks = sinks.to(self.values.device)
        out = []
        for start in range(0, sinks.shape[0], sink_chunk):
            chunk = sinks[start : start + sink_chunk]
            summed = self.token_values(chunk).sum(2)  # [H, C, P]: Σ_t
            out.append(torch.einsum("hcp,hpd->cd", summed, self.out_weight) + self.residual(chunk))
        return torch.cat(out)

    @torch.inference_mode()
    def max_relative_error(self, target: torch.Tensor | None = None) -> float:
        """Worst ``|Σ parts + residual − target| / max |target − x_in|`` over all sinks.

        ``target [N, D]``: the layer's output as captured (the residual after this branch). Default: ``x_in`` plus
        the branch output from the model's own mixer forward (for Falcon-H1 the captured residual also holds the
        attention branch, so pass ``x_mid − attention branch`` or use the default).
        """
        if target is None:
            target = self.x_in + self.branch.branch_output(self.x_in).to(self.x_in)
        target = target.to(self.x_in)
        update = (target - self.x_in).abs().max().clamp_min(1e-30)
        return float((self.rebuild() - target).abs().max() / update)


def _gated_norm_scale(branch: Mamba2Branch, y: torch.Tensor, gate: torch.Tensor, compute: torch.dtype) -> torch.Tensor:
    """``s [N, d_inner]`` with ``norm(y, z) = s ⊙ y`` at the forward values (gain × group rms scale × silu(z))."""
    gated = F.silu(gate)
    if not branch.gated_norm:
        return gated
    norm = branch.mixer.norm
    length, inner = y.shape
    if hasattr(norm, "group_size"):
        norm_groups = inner // int(norm.group_size)
    else:
        norm_groups = int(norm.n_groups)
    if inner % norm_groups:
        raise UnsupportedArchitectureError(f"{branch.family}: the gated norm's groups do not tile d_inner {inner}")
    normalised = y if branch.norm_before_gate else y * gated
    grouped = normalised.reshape(length, norm_groups, inner // norm_groups)
    scale = torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + float(norm.variance_epsilon))
    scale = scale.expand_as(grouped).reshape(length, inner)
    return norm.weight.detach().to(compute) * scale * gated

"""The AttnLRP rules (Achtibat et al., ICML 2024) as forward operations whose gradient × input is relevance.

If every operation's backward pass is arranged so that ``R(x) = x ⊙ ∂f/∂x`` is the relevance of its
input, one backward pass of the target ``f`` yields the relevance of every tensor, the input
embeddings included. The rules, and how each is obtained:

- linear map ``z = W x + b``: the ε-rule with ε → 0, ``R(x_i) = Σ_j x_i W_ji R(z_j) / z_j``, is the
  plain gradient × input; the bias keeps ``Σ_j b_j ∂f/∂z_j`` (recorded as absorbed). No division by
  ``z`` ever happens, so no stabiliser is needed.
- element-wise nonlinearity ``y = act(x)`` (SiLU, GELU): identity rule ``R(x) = R(y)``, from
  ``y = x · stopgrad(act(x) / x)``.
- normalisation (RMSNorm): identity rule through the normaliser, ``y = x · stopgrad(γ / rms(x))``,
  linear in x.
- product of two inputs (``q·kᵀ``, ``attention · V``, ``gate ⊙ up``): uniform rule, half of the
  product's relevance to each factor: both factors pass on half their gradient.
- softmax ``s = softmax(x)``: the paper's rule ``R(x_i) = x_i (R(s_i) − s_i Σ_j R(s_j))``, which is the
  softmax's own gradient × input; the relevance it does not pass on is recorded as absorbed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class RelevanceLedger:
    """Relevance the rules do not pass on: the biases' share and the softmaxes' (filled during backward)."""

    def __init__(self) -> None:
        self._bias: list[torch.Tensor] = []
        self._softmax: list[torch.Tensor] = []

    def record_bias(self, amount: torch.Tensor) -> None:
        self._bias.append(amount.detach().double())

    def record_softmax(self, amount: torch.Tensor) -> None:
        self._softmax.append(amount.detach().double())

    @property
    def bias(self) -> float:
        return float(sum(self._bias)) if self._bias else 0.0

    @property
    def softmax(self) -> float:
        return float(sum(self._softmax)) if self._softmax else 0.0


class _BiasRule(torch.autograd.Function):
    """``z + b``: the gradient passes to z unchanged; b keeps ``Σ b ⊙ ∂f/∂(z + b)`` (no gradient to b)."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, bias: torch.Tensor, ledger: RelevanceLedger | None) -> torch.Tensor:
        ctx.ledger = ledger
        ctx.save_for_backward(bias)
        return z + bias

    @staticmethod
    def backward(ctx: Any, gradient: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        if ctx.ledger is not None:
            (bias,) = ctx.saved_tensors
            ctx.ledger.record_bias((gradient * bias).sum())
        return gradient, None, None


class _SoftmaxRule(torch.autograd.Function):
    """Softmax over the last axis with its own gradient; records ``Σ R(s) − Σ R(x)`` (masked entries excluded)."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, ledger: RelevanceLedger | None) -> torch.Tensor:
        probabilities = torch.softmax(logits, dim=-1)
        ctx.ledger = ledger
        ctx.save_for_backward(logits, probabilities)
        return probabilities

    @staticmethod
    def backward(ctx: Any, gradient: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, probabilities = ctx.saved_tensors
        weighted = probabilities * gradient  # R(s) for every entry
        gradient_in = weighted - probabilities * weighted.sum(-1, keepdim=True)  # s ⊙ (g − s·g)
        if ctx.ledger is not None:
            relevance_in = torch.where(torch.isfinite(logits), logits * gradient_in, torch.zeros_like(logits))
            ctx.ledger.record_softmax(weighted.sum() - relevance_in.sum())
        return gradient_in, None


def linear(module: nn.Module, x: torch.Tensor, ledger: RelevanceLedger | None) -> torch.Tensor:
    """``module``'s ``W x + b`` in ``x``'s dtype, ε-rule (ε → 0) with the bias's share recorded."""
    z = F.linear(x, module.weight.to(x.device, x.dtype))
    if getattr(module, "bias", None) is not None:
        z = add_bias(z, module.bias, ledger)
    return z


def add_bias(z: torch.Tensor, bias: torch.Tensor, ledger: RelevanceLedger | None) -> torch.Tensor:
    """``z + bias``: the bias takes no relevance from the input but keeps ``Σ b ⊙ ∂f/∂(z + b)`` (recorded)."""
    return _BiasRule.apply(z, bias.to(z.device, z.dtype), ledger)


def rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """An RMSNorm ``γ ⊙ x / rms(x)`` over the last axis with the normaliser held constant (identity rule)."""
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    scale = norm.weight.to(x.device, x.dtype) * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return x * scale.detach()


def elementwise(activation: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``activation(x)`` passing relevance unchanged (identity rule): ``x · stopgrad(act(x) / x)``."""
    safe = torch.where(x == 0, torch.full_like(x, 1e-12), x)  # act(x)/x → act'(0) at 0
    return x * (activation(safe) / safe).detach()


def softmax(logits: torch.Tensor, ledger: RelevanceLedger | None) -> torch.Tensor:
    """Softmax over the last axis with the AttnLRP softmax rule (its own gradient × input)."""
    return _SoftmaxRule.apply(logits, ledger)


def half_gradient(x: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged, passing back half its gradient: one factor of a product under the uniform rule."""
    return 0.5 * x + 0.5 * x.detach()

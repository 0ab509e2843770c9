"""GPT-2: LayerNorm, fused Conv1D ``c_attn``, learned absolute positions (already in ``x_in``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..contract import AttentionRule, SandwichNorm
from ..errors import UnsupportedArchitectureError
from .registry import register_adapter

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class GPT2Adapter:
    """Adapter for ``GPT2LMHeadModel``: ``transformer.h[i]`` with ``ln_1``, ``attn``, ``ln_2``."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.config = model.config
        self.name = "gpt2"
        if not hasattr(model, "transformer") or not hasattr(model.transformer, "h"):
            raise UnsupportedArchitectureError("gpt2: expected `model.transformer.h` (the decoder blocks).")
        self._base = model.transformer
        self._blocks = model.transformer.h
        if getattr(self._blocks[0], "crossattention", None) is not None:
            raise UnsupportedArchitectureError("gpt2 with cross-attention is not a causal LM spantrace supports.")

    def base_model(self) -> nn.Module:
        return self._base

    def num_layers(self) -> int:
        return len(self._blocks)

    def layer(self, index: int) -> nn.Module:
        return self._blocks[index]

    def mid_hook_module(self, index: int) -> nn.Module:
        return self._blocks[index].ln_2

    def sandwich_norm(self, index: int) -> SandwichNorm | None:
        return None

    def attention_rule(self, index: int) -> AttentionRule:
        attention = self._blocks[index].attn
        return AttentionRule(
            num_heads=attention.num_heads,
            num_kv_heads=attention.num_heads,
            head_dim=attention.head_dim,
            scaling=float(attention.scaling),
            softcap=None,
            sliding_window=None,
        )

    def _projection(self, index: int, part: int, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden [C, D]`` through one third of the fused Conv1D ``c_attn`` (0 = q, 1 = k, 2 = v)."""
        c_attn = self._blocks[index].attn.c_attn  # Conv1D: weight [D, 3D], bias [3D]
        width = c_attn.weight.shape[1] // 3
        columns = slice(part * width, (part + 1) * width)
        return torch.addmm(c_attn.bias[columns], hidden, c_attn.weight[:, columns])

    def _heads(self, index: int, t: torch.Tensor) -> torch.Tensor:
        attention = self._blocks[index].attn
        return t.view(t.shape[0], attention.num_heads, attention.head_dim).transpose(0, 1)  # [H, C, d]

    def keys_values(self, index: int, x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self._blocks[index].ln_1(x_in)  # [N, D]
        return self._heads(index, self._projection(index, 1, hidden)), self._heads(
            index, self._projection(index, 2, hidden)
        )

    def queries(self, index: int, x_rows: torch.Tensor, positions: torch.Tensor, length: int) -> torch.Tensor:
        hidden = self._blocks[index].ln_1(x_rows)  # [C, D]; positions are already in x (learned)
        return self._heads(index, self._projection(index, 0, hidden))

    def output_projection(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        attention = self._blocks[index].attn
        weight = attention.c_proj.weight.detach()  # Conv1D: [H*d, D]
        per_head = weight.reshape(attention.num_heads, attention.head_dim, weight.shape[1])  # [H, d, D]
        return per_head, attention.c_proj.bias.detach()


register_adapter("gpt2", GPT2Adapter)

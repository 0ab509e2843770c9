"""GPT-2: LayerNorm, fused Conv1D ``c_attn``, learned absolute positions (already in ``x_in``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError
from .adapter import AttentionRule, SandwichNorm

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

    def project(self, index: int, x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        block = self._blocks[index]
        attention = block.attn
        hidden = block.ln_1(x_in)  # [N, D]
        n = hidden.shape[0]
        queries, keys, values = attention.c_attn(hidden).split(attention.split_size, dim=-1)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, attention.num_heads, attention.head_dim).transpose(0, 1)  # [H, N, d]

        return heads(queries), heads(keys), heads(values)

    def output_projection(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        attention = self._blocks[index].attn
        weight = attention.c_proj.weight.detach()  # Conv1D: [H*d, D]
        per_head = weight.reshape(attention.num_heads, attention.head_dim, weight.shape[1])  # [H, d, D]
        return per_head, attention.c_proj.bias.detach()

"""Mamba-2 hybrids: Nemotron-H (``nemotron_h``), Granite 4.0-H (``granitemoehybrid``), Bamba, Falcon-H1.

Their token mixing is softmax attention (Llama-like: GQA, optional rotary, read through ``keys_values`` /
``queries`` / ``output_projection`` as kind "attention", so the attention-reading baselines see it too) and
Mamba-2 mixers, split exactly by ``spantrace.model.mamba2`` (docs/hybrids.md) and served as a ``SplitLayer``
of kind "mamba2". Where each family keeps what:

- Nemotron-H: ``model.layers[i]`` is a ``NemotronHBlock`` holding ONE mixer (``block_type`` "linear_attention"
  = Mamba-2, "full_attention", "mlp" or "moe") behind its ``norm`` and inside its own residual add. Only the
  token-mixing blocks are spantrace layers: an MLP or MoE block mixes no tokens, so it has no edges and is not
  a layer (spantrace layer ``l`` is block ``token_blocks[l]``). ``x_mid`` of a layer is its block's output,
  read as the input of the next block (whatever its kind) or of the final ``norm_f``. Attention: no rotary,
  no biases, scaling ``head_dim^−½`` from the module.
- Granite 4.0-H: each layer has ``mamba`` or ``self_attn`` behind ``input_layernorm``, then
  ``post_attention_layernorm`` (the ``x_mid`` hook) and the MoE / shared MLP. ``residual_multiplier`` scales
  both kinds of branch (folded into W_out / W_O); attention scales q·k by ``attention_multiplier`` (the
  module's ``scaling``) and uses rotary only when ``position_embedding_type`` is "rope" (NoPE otherwise).
- Bamba: ``mamba`` or ``self_attn`` (partial rotary, ``partial_rotary_factor``: the model's own
  ``apply_rotary_pos_emb`` rotates the first dims the rotary tables cover), ``x_mid`` hook ``pre_ff_layernorm``.
- Falcon-H1: every layer runs attention and Mamba-2 in parallel on the same normed input and adds both to the
  residual, ``x_mid = x_in + ssm_out_multiplier · mamba(norm x_in) + attention_out_multiplier ·
  o_proj(attn(attention_in_multiplier · norm x_in))`` with keys multiplied by ``key_multiplier`` after
  ``k_proj`` (before rotary, which is linear, so the order does not matter). The layer is one
  ``ParallelLayer`` of kind "attention + mamba2": the attention heads then the Mamba heads, ``x_in`` counted
  once (``x_mid`` hook ``pre_ff_layernorm``).

Refused at construction (``UnsupportedArchitectureError``): a decoder-layer class or Nemotron-H block type not
listed here, an attention module without separate q/k/v/o projections, and whatever ``mamba2_branch`` refuses
(a conv activation other than SiLU, a mixer in training mode, a conv that is not depthwise).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..contract import AttentionRule, SandwichNorm, SpanPart
from ..errors import UnsupportedArchitectureError
from ..kernels.proximity import Workspace
from ..layers.softmax import LayerInputs, layer_inputs
from .hybrid import SplitLayer, float32
from .llama import LlamaStyleAdapter
from .mamba2 import Mamba2Mixing, is_mamba2_layer, mamba2_branch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..capture import Capture

# Decoder-layer classes this adapter reads (transformers 5.x).
_LAYER_CLASSES = ("NemotronHBlock", "GraniteMoeHybridDecoderLayer", "BambaDecoderLayer", "FalconH1DecoderLayer")
_NEMOTRON_MIXING = ("linear_attention", "full_attention")  # Nemotron-H blocks that mix tokens
_NEMOTRON_CHANNEL = ("mlp", "moe")  # Nemotron-H blocks that do not (not layers for spantrace)


@dataclass(eq=False)
class ParallelLayer:
    """Falcon-H1: softmax attention and a Mamba-2 mixer added to the same residual, as one ``MixingLayer``.

    Heads are the attention heads followed by the Mamba heads; the residual is ``x_in`` (once), the attention
    output bias and the Mamba branch's bias terms.
    """

    index: int
    attention: LayerInputs
    mamba: SplitLayer
    kind = "attention + mamba2"

    @property
    def num_heads(self) -> int:
        return self.attention.num_heads + self.mamba.num_heads

    @property
    def x_in(self) -> torch.Tensor:
        return self.attention.x_in

    @property
    def x_mid(self) -> torch.Tensor:
        return self.attention.x_mid

    def residual(self, sinks: torch.Tensor) -> torch.Tensor:
        sinks = sinks.to(self.x_in.device)
        biases = self.mamba.split.residual(sinks, include_x_in=False).float()  # type: ignore[attr-defined]
        return self.attention.residual(sinks) + biases.to(self.x_in.device)

    def span_parts(
        self, sinks: torch.Tensor, weights: torch.Tensor, width: int, chunk_size: int, workspace: object = None
    ) -> list[SpanPart]:
        return self.attention.span_parts(sinks, weights, width, chunk_size, workspace) + self.mamba.span_parts(
            sinks, weights, width, chunk_size, workspace
        )

    def token_parts(self, sinks: torch.Tensor, width: int, workspace: object = None) -> torch.Tensor:
        attention = self.attention.token_parts(sinks, width, workspace)  # [H_attn, C, width, D]
        mamba = self.mamba.token_parts(sinks, width).to(attention.device)  # [H_mamba, C, width, D]
        return torch.cat([attention, mamba])

    # the attention half's probabilities, for readers that want softmax rows (the Mamba heads have none)
    def rows(self, sinks: torch.Tensor, width: int | None = None) -> torch.Tensor:
        return self.attention.rows(sinks, width)

    def summed_rows(
        self,
        sinks: torch.Tensor,
        sink_weights: torch.Tensor,
        width: int,
        chunk_size: int,
        workspace: Workspace | None = None,
    ) -> torch.Tensor:
        return self.attention.summed_rows(sinks, sink_weights, width, chunk_size, workspace)


class Mamba2HybridAdapter(LlamaStyleAdapter):
    """Adapter of the Mamba-2 hybrids (see the module docstring for where each family keeps what)."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.name = getattr(model.config, "model_type", type(model).__name__)
        self.config = model.config.get_text_config()
        self.text_type = getattr(self.config, "model_type", self.name)
        base = getattr(model, "model", None)
        blocks = getattr(base, "layers", None)
        if blocks is None or len(blocks) == 0:
            raise UnsupportedArchitectureError(f"{self.name}: expected decoder layers at model.model.layers")
        self._base = base
        self._blocks = blocks
        self._family = type(blocks[0]).__name__
        if self._family not in _LAYER_CLASSES or any(type(b).__name__ != self._family for b in blocks):
            raise UnsupportedArchitectureError(
                f"{self.name}: decoder layers of class {self._family} are not a Mamba-2 hybrid layout spantrace "
                f"knows ({', '.join(_LAYER_CLASSES)})"
            )
        self._nemotron = self._family == "NemotronHBlock"
        if self._nemotron:
            unknown = {b.block_type for b in blocks} - set(_NEMOTRON_MIXING) - set(_NEMOTRON_CHANNEL)
            if unknown:
                raise UnsupportedArchitectureError(
                    f"{self.name}: unknown block type(s) {sorted(unknown)}; spantrace reads "
                    f"{', '.join(_NEMOTRON_MIXING + _NEMOTRON_CHANNEL)}"
                )
            self._block_index = [i for i, b in enumerate(blocks) if b.block_type in _NEMOTRON_MIXING]
        else:
            self._block_index = list(range(len(blocks)))
        self._layers = [blocks[i] for i in self._block_index]
        self._rotary = getattr(base, "rotary_emb", None)  # None: Nemotron-H, Granite 4.0-H with NoPE
        self._rotate = getattr(sys.modules[type(blocks[0]).__module__], "apply_rotary_pos_emb", None)
        self._sandwich_norms: dict[int, SandwichNorm | None] = {}
        self._cos_sin: dict[tuple[str | None, int, torch.device, torch.dtype], tuple] = {}
        for index, layer in enumerate(self._layers):
            if is_mamba2_layer(layer):
                mamba2_branch(layer)  # refuses what the split does not cover
            if self.layer_kind(index) != "mamba2":
                attention = self._attention(index)
                if attention is None or not all(hasattr(attention, f"{p}_proj") for p in "qkvo"):
                    raise UnsupportedArchitectureError(
                        f"{self.name}: layer {index} has neither a Mamba-2 mixer nor an attention module with "
                        "q_proj/k_proj/v_proj/o_proj"
                    )
        if self._rotary is not None and self._rotate is None:
            raise UnsupportedArchitectureError(f"{self.name}: the modeling module has no apply_rotary_pos_emb")

    def block_index(self, index: int) -> int:
        """The Hugging Face decoder-layer index of spantrace layer ``index`` (they differ for Nemotron-H only)."""
        return self._block_index[index]

    # hook points ---------------------------------------------------------------------------------
    def mid_hook_module(self, index: int) -> nn.Module:
        if self._nemotron:  # the block's output: the next block's input, or the final norm's
            following = self._block_index[index] + 1
            return self._blocks[following] if following < len(self._blocks) else self._base.norm_f
        layer = self._layers[index]
        if self._family == "GraniteMoeHybridDecoderLayer":
            return layer.post_attention_layernorm
        return layer.pre_ff_layernorm  # Bamba, Falcon-H1

    def sandwich_norm(self, index: int) -> SandwichNorm | None:
        return None

    # layer kinds ---------------------------------------------------------------------------------
    def layer_kind(self, index: int) -> str:
        if self._family == "FalconH1DecoderLayer":
            return "attention + mamba2"
        return "mamba2" if is_mamba2_layer(self._layers[index]) else "attention"

    def mixing_layer(self, index: int, capture: Capture) -> SplitLayer | ParallelLayer:
        layer = self._layers[index]
        x_in, x_mid = capture.x_in[index], capture.x_mid[index]
        split = Mamba2Mixing.from_layer(layer, x_in)
        if self.layer_kind(index) == "mamba2":
            device = next(layer.parameters()).device
            return SplitLayer(index, "mamba2", split, split.token_values, *float32(device, x_in, x_mid))
        attention = layer_inputs(self, capture, index)  # the attention half, read like any softmax layer
        mamba = SplitLayer(index, "mamba2", split, split.token_values, attention.x_in, attention.x_mid)
        return ParallelLayer(index, attention, mamba)

    # attention -----------------------------------------------------------------------------------
    def _attention(self, index: int) -> nn.Module:
        layer = self._layers[index]
        return layer.mixer if self._nemotron else getattr(layer, "self_attn", None)

    def _attention_input(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """What q/k/v_proj read: the pre-mixer norm of ``x`` (times Falcon-H1's ``attention_in_multiplier``)."""
        layer = self._layers[index]
        hidden = layer.norm(x) if self._nemotron else layer.input_layernorm(x)
        multiplier = getattr(layer, "attention_in_multiplier", None)
        return hidden * multiplier if multiplier is not None else hidden

    def attention_rule(self, index: int) -> AttentionRule:
        attention = self._attention(index)
        heads = self.config.num_attention_heads
        return AttentionRule(
            num_heads=heads,
            num_kv_heads=getattr(self.config, "num_key_value_heads", None) or heads,
            head_dim=attention.head_dim,
            scaling=float(attention.scaling),  # Granite: attention_multiplier
            softcap=None,
            sliding_window=None,  # every family here builds a plain causal mask for its attention
        )

    def _uses_rotary(self, index: int) -> bool:
        return self._rotary is not None

    def _attention_output_scale(self, index: int) -> float:
        """Granite's ``residual_multiplier``, Falcon-H1's ``attention_out_multiplier``, else 1."""
        layer = self._layers[index]
        if self._family == "GraniteMoeHybridDecoderLayer":
            return float(layer.residual_multiplier)
        if self._family == "FalconH1DecoderLayer":
            return float(layer.attn_out_multiplier)
        return 1.0

"""Mamba-2 hybrids: Nemotron-H (``nemotron_h``), Granite 4.0-H (``granitemoehybrid``), Bamba, Falcon-H1.

Their token mixing is softmax attention (Llama-like: GQA, optional rotary, read through ``keys_values`` /
``queries`` / ``output_projection`` as kind "attention", so the attention-reading baselines see it too) and
Mamba-2 mixers, split exactly by ``spantrace.layers.mamba2`` (docs/hybrids.md) and served as a ``SplitLayer``
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
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..contract import AttentionRule, SandwichNorm
from ..errors import UnsupportedArchitectureError
from ..layers.mamba2 import Mamba2Branch, Mamba2Mixing, checked_branch
from ..layers.softmax import layer_inputs
from ..layers.split import ParallelLayer, SplitLayer, float32
from .llama import LlamaStyleAdapter
from .registry import register_adapter

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..capture import Capture

# Decoder-layer classes this adapter reads (transformers 5.x).
_LAYER_CLASSES = ("NemotronHBlock", "GraniteMoeHybridDecoderLayer", "BambaDecoderLayer", "FalconH1DecoderLayer")
_NEMOTRON_MIXING = ("linear_attention", "full_attention")  # Nemotron-H blocks that mix tokens
_NEMOTRON_CHANNEL = ("mlp", "moe")  # Nemotron-H blocks that do not (not layers for spantrace)


# ----------------------------------------------------------------------------------------------------
# Where the Mamba-2 mixer sits in each family's decoder layer
# ----------------------------------------------------------------------------------------------------


def _nemotron_h(layer: nn.Module) -> Mamba2Branch:
    if getattr(layer, "block_type", None) != "linear_attention":
        raise UnsupportedArchitectureError(
            f"nemotron_h: this block is a {getattr(layer, 'block_type', '?')!r} block, not a Mamba-2 one"
        )
    return Mamba2Branch("nemotron_h", layer.norm, layer.mixer, 1.0, 1.0, None, True, False, False)


def _granite_hybrid(layer: nn.Module) -> Mamba2Branch:
    if layer.mamba is None:
        raise UnsupportedArchitectureError("granitemoehybrid: this layer is an attention layer, not a Mamba-2 one")
    scale = float(layer.residual_multiplier)
    return Mamba2Branch("granitemoehybrid", layer.input_layernorm, layer.mamba, scale, 1.0, None, True, False, False)


def _bamba(layer: nn.Module) -> Mamba2Branch:
    if getattr(layer, "block_type", None) != "linear_attention":
        raise UnsupportedArchitectureError("bamba: this layer is an attention layer, not a Mamba-2 one")
    return Mamba2Branch("bamba", layer.input_layernorm, layer.mamba, 1.0, 1.0, None, True, False, False)


def _falcon_h1(layer: nn.Module) -> Mamba2Branch:
    mixer = layer.mamba
    gated = bool(mixer.mamba_rms_norm)
    return Mamba2Branch(
        family="falcon_h1",
        norm=layer.input_layernorm,
        mixer=mixer,
        output_scale=float(layer.ssm_out_multiplier),
        input_scale=float(mixer.ssm_in_multiplier),
        projection_scale=mixer.mup_vector.reshape(-1),
        gated_norm=gated,
        norm_before_gate=gated and bool(mixer.norm.norm_before_gate),
        parallel_attention=True,
    )


# Decoder-layer classes whose Mamba-2 mixer this module reads (transformers 5.x), and how.
_BRANCHES: dict[str, Callable[[nn.Module], Mamba2Branch]] = {
    "NemotronHBlock": _nemotron_h,
    "GraniteMoeHybridDecoderLayer": _granite_hybrid,
    "BambaDecoderLayer": _bamba,
    "FalconH1DecoderLayer": _falcon_h1,
}


def mamba2_branch(layer: nn.Module) -> Mamba2Branch:
    """The Mamba-2 branch of a decoder layer; UnsupportedArchitectureError if there is none or it is unknown."""
    kind = type(layer).__name__
    reader = _BRANCHES.get(kind)
    if reader is None:
        raise UnsupportedArchitectureError(
            f"{kind} is not a decoder layer whose Mamba-2 mixer spantrace knows (known: {', '.join(_BRANCHES)})"
        )
    return checked_branch(reader(layer))


def is_mamba2_layer(layer: nn.Module) -> bool:
    """Whether ``layer`` is a known decoder layer holding a Mamba-2 mixer."""
    kind = type(layer).__name__
    if kind not in _BRANCHES:
        return False
    if kind == "GraniteMoeHybridDecoderLayer":
        return layer.mamba is not None
    if kind == "FalconH1DecoderLayer":
        return True
    return getattr(layer, "block_type", None) == "linear_attention"


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
        split = Mamba2Mixing.from_branch(mamba2_branch(layer), x_in)
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


for _model_type in ("nemotron_h", "granitemoehybrid", "bamba", "falcon_h1"):
    register_adapter(_model_type, Mamba2HybridAdapter)

"""AttnLRP (Achtibat et al., ICML 2024): layer-wise relevance of the span's target logits.

``f = Σ_i w_i · z_i`` with ``z_i`` the logit of sink i's token at position i − 1 (teacher forcing).
One forward pass of the model, rewritten here from its own modules so that the backward pass follows
the LRP rules of ``lrp_rules`` (ε-rule on linears, identity rule on norms and the MLP activation,
uniform rule on ``q·kᵀ``, ``attention · V`` and ``gate ⊙ up``, the paper's softmax rule), then one
backward pass. A position's score is the relevance of its input embedding, ``Σ_d x_{j,d} ∂f/∂x_{j,d}``
(signed). Conservation: ``Σ_j score_j + absorbed_by_biases + absorbed_by_softmax = f`` exactly (up to
rounding); what the embeddings hold alone is ``f`` less the softmax and bias shares.

Supported: decoders the Llama-style adapter reads whose every piece has a rule here — pre-norm RMSNorm,
separate q/k/v/o projections, rotary embeddings (layers without rotary, SmolLM3, and a position-dependent
query scale, Ministral 3, included), a dense gated MLP: ``llama`` (and SmolLM), ``mistral``, ``qwen2``,
``qwen3``, ``smollm3``, ``seed_oss``, ``ministral3`` and ``mistral3``. The layers, their modules, the
rotary tables and the rotation come from the model's adapter, not from fixed attribute paths. Anything
else (sandwich or post-attention norms, soft-capping, sink logits, chunked attention, fused projections,
mixtures of experts, residual or embedding multipliers, LayerNorm) raises ``UnsupportedArchitectureError``
naming what has no rule.
Memory: each layer and each chunk of queries is recomputed in the backward pass (checkpointing),
so the attention probabilities alive at once are O(H · chunk · N).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.utils.checkpoint import checkpoint

from ..architectures.llama import LlamaStyleAdapter
from ..contract import AttentionRule
from ..errors import UnsupportedArchitectureError
from ..offload import execution_device, materialized
from ..protocols import RunView
from . import lrp_rules as rules
from .base import AttributionMethod, SinkScores
from .objective import Objective, input_embeddings, objective_for, scores_over_run
from .registry import register_method

# The architectures AttnLRP has a rule for every piece of: config.model_type -> the adapter (class name) that reads
# them as Llama-style layers. A model of another type, or read by another adapter (one registered over these
# types, unless it extends the Llama-style one), is refused.
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    model_type: "LlamaStyleAdapter"
    for model_type in ("llama", "mistral", "qwen2", "qwen3", "smollm3", "seed_oss", "ministral3", "mistral3")
}


def reads_as(adapter: object, adapter_name: str) -> bool:
    """Whether ``adapter`` is the adapter class ``adapter_name`` or extends it."""
    return any(cls.__name__ == adapter_name for cls in type(adapter).__mro__)


@dataclass(frozen=True)
class Relevance:
    """AttnLRP's output with its conservation terms."""

    scores: torch.Tensor  # [N] float32: relevance of each input embedding, 0 from the last sink on
    target: float  # f = Σ_i w_i z_i
    absorbed_by_biases: float  # Σ over biases of b · ∂f/∂z
    absorbed_by_softmax: float  # Σ over attention softmaxes of R(out) − R(in)
    notes: tuple[str, ...] = ()


def check_supported(run: RunView) -> None:
    """Raise UnsupportedArchitectureError unless AttnLRP has a rule for every piece of the run's model."""
    adapter, name = run.adapter, run.adapter.name
    problem = None
    if name not in SUPPORTED_ARCHITECTURES or not reads_as(adapter, SUPPORTED_ARCHITECTURES[name]):
        problem = f"its architecture is {name!r}"
    else:
        pieces = {
            "self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
            "mlp": ("gate_proj", "up_proj", "down_proj", "act_fn"),
        }
        for index in range(adapter.num_layers()):
            layer = adapter.layer(index)
            missing = [
                f"{part}.{p}" for part, names in pieces.items() for p in names if not hasattr(getattr(layer, part), p)
            ]
            rule = adapter.attention_rule(index)
            if missing:
                problem = f"layer {index} lacks {', '.join(missing)}"
            elif rule.softcap is not None or rule.sink_logits is not None or rule.attention_chunk is not None:
                problem = f"layer {index} soft-caps its logits, has sink logits or chunked attention"
            elif adapter.sandwich_norm(index) is not None or hasattr(layer, "residual_multiplier"):
                problem = f"layer {index} normalises or scales its attention output"
            if problem is not None:
                break
    if problem is not None:
        raise UnsupportedArchitectureError(
            f"attnlrp supports {', '.join(SUPPORTED_ARCHITECTURES)} (pre-norm RMSNorm, rotary, gated MLP), but "
            f"this model cannot be traced with it: {problem}. Use another method, e.g. 'grad-input' or 'flashtrace'."
        )


class LlamaRelevanceModel:
    """The model's forward pass for positions ``0 … T − 1``, rebuilt from its modules with the LRP rules."""

    def __init__(self, run: RunView, ledger: rules.RelevanceLedger | None, chunk_size: int) -> None:
        self.model = run.model.hf_model
        self.adapter: LlamaStyleAdapter = run.adapter
        self.ledger = ledger
        self.chunk_size = chunk_size

    def logits(self, embeddings: torch.Tensor, objective: Objective) -> torch.Tensor:
        """embeddings: [T, D] -> the target logits ``z [M']`` at ``objective.readout``."""
        hidden = embeddings
        for index in range(self.adapter.num_layers()):
            hidden = checkpoint(self.layer, index, hidden, use_reentrant=False)
        readout = objective.readout.to(hidden.device).clone()  # clones: never inference tensors in autograd
        head, norm = self.model.get_output_embeddings(), self.adapter.base_model().norm
        with materialized(norm), materialized(head):  # their weights, if accelerate offloaded them
            normed = rules.rms_norm(hidden[readout], norm)  # [M', D]
            targets = objective.targets.to(hidden.device).clone()
            rows = head.weight[targets.to(head.weight.device)].to(normed.device, normed.dtype)  # [M', D]
            logits = (normed * rows).sum(-1)  # [M']
            if getattr(head, "bias", None) is not None:
                logits = rules.add_bias(logits, head.bias[targets.to(head.bias.device)], self.ledger)
        return logits

    def layer(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """Decoder layer ``index``: hidden [T, D] -> [T, D], on the layer's device with its weights loaded (also
        when the backward pass recomputes it)."""
        block = self.adapter.layer(index)
        with materialized(block):
            return self._layer(index, hidden.to(execution_device(block) or hidden.device))

    def _layer(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        block = self.adapter.layer(index)
        attention, mlp, ledger = block.self_attn, block.mlp, self.ledger
        rule = self.adapter.attention_rule(index)
        length = hidden.shape[0]
        normed = rules.rms_norm(hidden, block.input_layernorm)  # [T, D]
        queries = rules.linear(attention.q_proj, normed, ledger).view(length, rule.num_heads, rule.head_dim)
        keys = rules.linear(attention.k_proj, normed, ledger).view(length, rule.num_kv_heads, rule.head_dim)
        values = rules.linear(attention.v_proj, normed, ledger).view(length, rule.num_kv_heads, rule.head_dim)
        if hasattr(attention, "q_norm"):  # Qwen3: per-head RMSNorm before rotary
            queries, keys = rules.rms_norm(queries, attention.q_norm), rules.rms_norm(keys, attention.k_norm)
        queries, keys = queries.transpose(0, 1)[None], keys.transpose(0, 1)[None]  # [1, H or G, T, d]
        if self.adapter._uses_rotary(index):  # the adapter's rotary tables and the model's own rotation
            # clones: the adapter caches its tables, maybe made in inference mode, which autograd cannot save
            cos, sin = (table.clone() for table in self.adapter._rotary_tables(index, hidden.detach(), length))
            queries, keys = self.adapter._rotate(queries, keys, cos, sin)
        positions = torch.arange(length, device=hidden.device)
        scale = self.adapter._query_scale(positions)  # Ministral 3: a constant factor per position
        if scale is not None:
            queries = queries * scale.to(queries.device, queries.dtype)[None, None, :, None]
        group = rule.num_heads // rule.num_kv_heads
        keys = keys[0].repeat_interleave(group, dim=0)  # [H, T, d]
        values = values.transpose(0, 1).repeat_interleave(group, dim=0)  # [H, T, d]
        mixed = torch.cat(
            [
                checkpoint(
                    self.attend,
                    queries[0, :, start : start + self.chunk_size],
                    keys,
                    values,
                    start,
                    rule,
                    use_reentrant=False,
                )
                for start in range(0, length, self.chunk_size)
            ],
            dim=1,
        )  # [H, T, d]
        hidden = hidden + rules.linear(attention.o_proj, mixed.transpose(0, 1).reshape(length, -1), ledger)
        normed = rules.rms_norm(hidden, block.post_attention_layernorm)
        gate = rules.elementwise(mlp.act_fn, rules.linear(mlp.gate_proj, normed, ledger))  # [T, I]
        up = rules.linear(mlp.up_proj, normed, ledger)  # [T, I]
        product = rules.half_gradient(gate) * rules.half_gradient(up)
        return hidden + rules.linear(mlp.down_proj, product, ledger)

    def attend(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int, rule: AttentionRule
    ) -> torch.Tensor:
        """Attention of the queries at ``start …`` (queries [H, C, d]) over keys/values [H, T, d] -> [H, C, d]."""
        width = start + queries.shape[1]  # later keys are masked anyway
        keys, values = keys[:, :width], values[:, :width]
        logits = rules.half_gradient(queries) @ rules.half_gradient(keys).transpose(1, 2) * rule.scaling  # [H, C, W]
        sinks = torch.arange(start, width, device=queries.device)[:, None]
        sources = torch.arange(width, device=queries.device)[None, :]
        visible = sources <= sinks  # [C, W]
        if rule.sliding_window is not None:
            visible &= sources > sinks - rule.sliding_window
        probabilities = rules.softmax(logits.masked_fill(~visible[None], float("-inf")), self.ledger)
        return rules.half_gradient(probabilities) @ rules.half_gradient(values)


def attnlrp_relevance(
    run: RunView, sinks: torch.Tensor, sink_weights: torch.Tensor, *, chunk_size: int = 128, record: bool = False
) -> Relevance:
    """Relevance of every input embedding for ``Σ_i w_i z_i``; ``record`` fills the absorbed terms (slower)."""
    check_supported(run)
    objective = objective_for(run, sinks, sink_weights)
    if objective is None:
        return Relevance(torch.zeros(run.num_tokens), 0.0, 0.0, 0.0, ("no sink can be predicted",))
    ledger = rules.RelevanceLedger() if record else None
    ids = torch.tensor(run.token_ids[: objective.length], dtype=torch.long)
    embeddings = input_embeddings(run, ids)  # [T, D]
    dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
    relevance_model = LlamaRelevanceModel(run, ledger, chunk_size)
    with torch.inference_mode(False), torch.enable_grad():
        leaf = embeddings.to(dtype).detach().clone().requires_grad_(True)
        target = relevance_model.logits(leaf, objective) @ objective.weights.to(leaf.device, dtype).clone()
        (gradient,) = torch.autograd.grad(target, leaf)
    per_position = (leaf.detach() * gradient).sum(-1)  # [T]
    return Relevance(
        scores=scores_over_run(run, per_position),
        target=float(target.detach()),
        absorbed_by_biases=ledger.bias if ledger else 0.0,
        absorbed_by_softmax=ledger.softmax if ledger else 0.0,
        notes=objective.notes,
    )


@register_method
class AttnLRP(AttributionMethod):
    name = "attnlrp"
    description = "AttnLRP (Achtibat et al. 2024): LRP relevance of the span's target logits, one backward pass."
    cost: ClassVar[str] = "O(forward + backward)"
    signed: ClassVar[bool] = True  # scores can be negative

    def score(self, run: RunView, sinks: torch.Tensor, sink_weights: torch.Tensor, *, chunk_size: int) -> SinkScores:
        relevance = attnlrp_relevance(run, sinks, sink_weights, chunk_size=chunk_size)
        return SinkScores(scores=relevance.scores, notes=relevance.notes)

"""The objective the gradient and perturbation methods explain: the span's teacher-forced log-probability.

``f(x) = Σ_i w_i · log p(t_i | t_<i)`` over the sinks i with weights w_i. Teacher forcing: the token at
sink position i is *predicted by the logits at position i − 1*, so ``f`` reads the logits at
``sinks − 1`` and needs the input only up to the last sink − 1 (later tokens cannot change it; they
get score 0). A sink at position 0 has nothing to be predicted from and is left out with a note.

Also here: the neutral token (pad, else EOS) that IG and occlusion put in place of real tokens, the
input embeddings of a run, the forward from them that repeats the run's own (``replayed_log_prob``: its positions
or token types, and Qwen3-VL's deepstack features), and a batch size that keeps a batched forward + backward within
memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..architectures.vision import image_blocks
from ..errors import SpanTraceError, UnsupportedArchitectureError
from ..offload import execution_device
from ..protocols import RunView
from ..readout import token_log_probs

# Activation elements one batched forward + backward may hold (~1 GiB in float32).
ACTIVATION_BUDGET_ELEMENTS = 1 << 28


@dataclass(frozen=True)
class Objective:
    """Which logits to read and which tokens to score: ``f = Σ_k weights[k] · log p(targets[k] | readout[k])``."""

    readout: torch.Tensor  # [M'] long: positions whose logits predict the sinks (sink − 1)
    targets: torch.Tensor  # [M'] long: the sinks' token ids
    weights: torch.Tensor  # [M'] float32
    length: int  # the forward needs tokens 0 … length − 1 (length = last sink)
    notes: tuple[str, ...] = ()


def require_one_embedding_channel(run: RunView, method: str) -> None:
    """Refuse gradient methods on models that read each token through a second embedding table.

    Gemma 4's small checkpoints add per-layer token embeddings (``hidden_size_per_layer_input``) that the
    model looks up from the ids, not from the input embeddings: a gradient with respect to the input
    embeddings would silently leave that channel out.
    """
    if getattr(run.model.hf_model.config.get_text_config(), "hidden_size_per_layer_input", None):
        raise UnsupportedArchitectureError(
            f"{method} differentiates the input embeddings, but this model also reads every token through per-layer "
            "input embeddings (Gemma 4) that gradients would miss; use occlusion or flashtrace."
        )


def objective_for(run: RunView, sinks: torch.Tensor, sink_weights: torch.Tensor) -> Objective | None:
    """The teacher-forced objective of the weighted sinks, or None when no sink can be predicted.

    On a run with model inputs (images) the methods re-run the model from input embeddings in which the image
    positions hold the merged image features; an adapter that cannot repeat its images so (``replay_inputs`` None)
    is refused here (docs/vision-engine.md)."""
    replay_inputs(run, 1, 1)
    keep = (sinks > 0) & (sink_weights != 0)
    notes = ("a sink at position 0 has no prefix to be predicted from; left out",) if bool((sinks == 0).any()) else ()
    if not bool(keep.any()):
        return None
    sinks, weights = sinks[keep], sink_weights[keep].float()
    ids = torch.tensor(run.token_ids, dtype=torch.long)
    return Objective(readout=sinks - 1, targets=ids[sinks], weights=weights, length=int(sinks.max()), notes=notes)


def weighted_log_prob(
    model: torch.nn.Module,
    objective: Objective,
    *,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    **extra: torch.Tensor,
) -> torch.Tensor:
    """``f`` for each sequence of a batch: input_ids [B, T] or inputs_embeds [B, T, D] -> [B] float32.
    ``extra``: more forward inputs (``replay_inputs``).

    Only the logits at ``objective.readout`` are computed (``readout.token_log_probs``), never ``[T, V]``.
    """
    given = input_ids if input_ids is not None else inputs_embeds
    attention_mask = torch.ones(given.shape[:2], dtype=torch.long, device=given.device)  # no padding: all real
    chosen = token_log_probs(model, objective.readout, objective.targets, input_ids=input_ids,
                             inputs_embeds=inputs_embeds, attention_mask=attention_mask, **extra)  # [B, M']
    # A clone: the objective may have been made under inference_mode, and autograd cannot save such tensors.
    return chosen @ objective.weights.to(given.device).clone()


def neutral_token_id(run: RunView) -> int:
    """The id put in place of removed tokens: the tokenizer's or model's pad token, else its EOS token."""
    tokenizer, config = run.model.tokenizer, run.model.hf_model.config
    text_config = config.get_text_config()  # a multimodal wrapper keeps its token ids with the text stack
    candidates = [
        getattr(tokenizer, "pad_token_id", None),
        getattr(config, "pad_token_id", None),
        getattr(text_config, "pad_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
        getattr(config, "eos_token_id", None),
        getattr(text_config, "eos_token_id", None),
    ]
    for candidate in candidates:
        if isinstance(candidate, (list, tuple)):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    raise SpanTraceError(
        "the model has neither a pad nor an EOS token to use as the neutral token; "
        "set `model.hf_model.config.pad_token_id` to a harmless token id"
    )


def input_embeddings(run: RunView, token_ids: torch.Tensor) -> torch.Tensor:
    """The model's input embeddings of ``token_ids [..., T]`` -> ``[..., T, D]``, detached, in the model's dtype.

    Uses the model's own embedding module, so scaled embeddings (Gemma) come out as the layers see them. On a run
    with images, each image position whose id is still the run's image token holds the merged image feature the
    text stack read (the captured ``x_in`` of layer 0 there), not the placeholder's embedding.
    """
    embedding = run.model.hf_model.get_input_embeddings()
    with torch.no_grad():
        # an offloaded table is on meta: its hook loads it on its execution device
        embedded = embedding(token_ids.to(execution_device(embedding) or "cpu")).detach().clone()
    image = image_mask(run, token_ids.shape[-1])
    if image is not None:
        token = torch.tensor(run.token_ids[: image.shape[0]])  # the run's ids: an image token kept in place
        image = (image & (token_ids.cpu() == token)).to(embedded.device)  # [..., T]
        features = run.capture.x_in[0][: image.shape[-1]].to(device=embedded.device, dtype=embedded.dtype)
        embedded = torch.where(image[..., None], features, embedded)
    return embedded


def image_mask(run: RunView, length: int) -> torch.Tensor | None:
    """[length] bool: the image positions among the first ``length`` of a run with images; None for text."""
    if not getattr(run, "model_inputs", None):
        return None
    mask = torch.zeros(length, dtype=torch.bool)
    for start, end in image_blocks(run.token_ids, run.model.hf_model.config):
        mask[start : min(end, length)] = True
    return mask


def replay_inputs(run: RunView, length: int, batch: int) -> dict[str, torch.Tensor]:
    """What a forward from input embeddings needs besides them to be the run's own on its first ``length`` tokens,
    for ``batch`` rows: nothing for text; the captured positions or token types of a run with images (the
    adapter's ``replay_inputs``; Qwen3-VL's deepstack features go in through ``replayed_log_prob``). An adapter
    whose ``replay_inputs`` is None (its image features enter where such a forward cannot put them back) is
    refused in one line."""
    if not getattr(run, "model_inputs", None):
        return {}
    replay = getattr(run.adapter, "replay_inputs", None)
    if replay is None:
        raise UnsupportedArchitectureError(
            f"this method re-runs {run.adapter.name} from input embeddings, but its image features also enter "
            "later layers, which that forward pass would leave out; use flashtrace, ifr, ifr-rollout, "
            "attention-last, attention-mean or rollout on runs with images"
        )
    return replay(run.capture, run.model_inputs, length, batch)


def deepstack_features(run: RunView, length: int) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
    """The deepstack features (Qwen3-VL) the capture's forward added at the image positions among the first
    ``length`` tokens: ``(positions [n] long, one [n, D] per layer they join after)``; None when none are there."""
    kept = getattr(run.capture, "deepstack", None)
    if kept is None:
        return None
    mask, features = kept
    positions = mask[:length].cpu().nonzero()[:, 0]  # the model's order: the features follow the positions
    if positions.shape[0] == 0:
        return None
    return positions, [f[: positions.shape[0]] for f in features]


@contextlib.contextmanager
def _deepstack_added(run: RunView, length: int, features: list[torch.Tensor] | None) -> Iterator[None]:
    """While inside, the text model adds ``features`` (per layer ``[B or 1, n, D]``) at the run's image positions
    among the first ``length`` tokens (the adapter's ``adding_deepstack``); nothing happens with None."""
    if features is None:
        yield
        return
    mask = torch.zeros(length, dtype=torch.bool)
    mask[deepstack_features(run, length)[0]] = True
    with run.adapter.adding_deepstack(mask, features):
        yield


def replayed_log_prob(
    run: RunView, objective: Objective, inputs_embeds: torch.Tensor, deepstack: list[torch.Tensor] | None = None
) -> torch.Tensor:
    """``f`` of input embeddings ``[B, T, D]`` -> ``[B]``, by a forward that is the run's own: its positions or token
    types (``replay_inputs``) and, on a run with deepstack features, ``deepstack`` (per layer ``[B or 1, n, D]``)
    added at its image positions; by default the captured ones, unchanged."""
    batch, length = inputs_embeds.shape[:2]
    kept = deepstack_features(run, length)
    if kept is not None and deepstack is None:
        deepstack = [f[None] for f in kept[1]]
    with _deepstack_added(run, length, deepstack if kept is not None else None):
        return weighted_log_prob(run.model.hf_model, objective, inputs_embeds=inputs_embeds,
                                 **replay_inputs(run, length, batch))


def auto_batch_size(run: RunView, length: int, readouts: int, limit: int) -> int:
    """How many sequences of ``length`` tokens one forward + backward can take within the activation budget."""
    vocab, width = run.model.hf_model.get_input_embeddings().weight.shape
    per_sequence = length * run.capture.num_layers * 16 * width + 2 * readouts * vocab
    return max(1, min(limit, ACTIVATION_BUDGET_ELEMENTS // max(per_sequence, 1)))


def scores_over_run(run: RunView, per_position: torch.Tensor) -> torch.Tensor:
    """Place ``per_position [T]`` (the first T positions) into a zero [N] float32 vector."""
    scores = torch.zeros(run.num_tokens, dtype=torch.float32)
    scores[: per_position.shape[0]] = per_position.detach().float().cpu()
    return scores


def embedding_gradients(
    run: RunView, objective: Objective, inputs_embeds: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``f`` and ``∂f/∂x`` for a batch of input embeddings ``[B, T, D]`` -> ``([B] float32, [B, T, D])``.

    A fresh forward with gradients on, whatever mode the caller is in (the model may be used under
    ``inference_mode`` elsewhere); only the embeddings' gradient is computed, never the weights'. Deepstack
    features (Qwen3-VL) are added as captured: constants, as in the model, where they depend on the pixels only.
    """
    values, gradient, _ = path_gradients(run, objective, inputs_embeds)
    return values, gradient


def path_gradients(
    run: RunView, objective: Objective, inputs_embeds: torch.Tensor, deepstack_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``embedding_gradients`` with the deepstack features (Qwen3-VL) of row b scaled by ``deepstack_scale[b]``
    (None: as captured, constant). Also returns ``[B, T]``: at each image position, ``Σ_k d_k · ∂f/∂e_k`` over the
    deepstack layers k, with ``d_k`` the captured feature and ``e_k`` the one added (0 elsewhere, and 0 without a
    scale): the derivative of ``f`` along a path that scales the features, which integrated gradients adds up."""
    batch, length = inputs_embeds.shape[:2]
    kept = deepstack_features(run, length) if deepstack_scale is not None else None
    share = torch.zeros(batch, length, dtype=torch.float32, device=inputs_embeds.device)
    with torch.inference_mode(False), torch.enable_grad():
        leaf = inputs_embeds.detach().clone().requires_grad_(True)
        added = None
        if kept is not None:  # e_k = scale · d_k, one row per sequence, each a leaf
            scale = deepstack_scale.to(inputs_embeds.device, torch.float32)[:, None, None]
            added = [(scale * f.to(inputs_embeds.device).float()[None]).to(f.dtype).requires_grad_(True)
                     for f in kept[1]]
        values = replayed_log_prob(run, objective, leaf, added)  # [B]
        # rows are independent: one backward for all
        gradients = torch.autograd.grad(values.sum(), [leaf, *(added or [])])
    if kept is not None:
        for feature, gradient in zip(kept[1], gradients[1:], strict=True):  # [n, D], [B, n, D]
            share[:, kept[0].to(share.device)] += (gradient.float() * feature.to(share.device).float()[None]).sum(-1)
    return values.detach(), gradients[0].detach(), share


def replaced_log_probs(
    run: RunView, objective: Objective, ids: torch.Tensor, sequences: torch.Tensor, batch: int
) -> torch.Tensor:
    """``f`` of each row of ``sequences [B, T]`` (the run's ``ids [T]`` with some positions replaced by the neutral
    token), ``batch`` rows per forward -> ``[B]``: the one way occlusion and the evaluation's deletion curves
    remove tokens. On a run with images, a replaced image position reads the zero vector (no image feature at
    all; on Qwen3-VL its deepstack features go too), its position ids and bidirectional block stay, and every
    other position reads what the model read (``replayed_log_prob``)."""
    model = run.model.hf_model
    image = image_mask(run, ids.shape[0])
    if image is None:
        return torch.cat([
            weighted_log_prob(model, objective, input_ids=sequences[start : start + batch].to(run.model.device))
            for start in range(0, sequences.shape[0], batch)
        ])
    rows = _occluded_embeddings(run, ids, sequences, image)
    deepstack = _occluded_deepstack(run, ids, sequences)
    return torch.cat([
        replayed_log_prob(run, objective, rows[start : start + batch].to(run.model.device),
                          None if deepstack is None else [f[start : start + batch] for f in deepstack])
        for start in range(0, sequences.shape[0], batch)
    ])


def _occluded_embeddings(
    run: RunView, ids: torch.Tensor, sequences: torch.Tensor, image: torch.Tensor
) -> torch.Tensor:
    """The occluded rows of a run with images as input embeddings ``[k + 1, T, D]``: an occluded text position
    gets the neutral token's embedding, an occluded image position the zero vector (no image feature at all; on
    Qwen3-VL its deepstack features go too, ``_occluded_deepstack``; its position and its block stay as they were),
    every other position what the model read."""
    embedded = input_embeddings(run, sequences)  # image positions still holding the image token: their features
    occluded_image = image[None] & (sequences != ids[None])  # [k + 1, T]
    return embedded.masked_fill(occluded_image[..., None].to(embedded.device), 0.0)


def _occluded_deepstack(run: RunView, ids: torch.Tensor, sequences: torch.Tensor) -> list[torch.Tensor] | None:
    """Per deepstack layer (Qwen3-VL), the features each row adds at the image positions ``[k + 1, n, D]``: the
    captured ones, and 0 (none added) where the row occludes the image position; None for a run without them."""
    kept = deepstack_features(run, ids.shape[0])
    if kept is None:
        return None
    positions, features = kept
    present = (sequences[:, positions] == ids[positions][None]).float()  # [k + 1, n]: 0 where occluded
    return [f[None] * present[..., None].to(f.device, f.dtype) for f in features]

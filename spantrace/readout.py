"""Teacher-forced log-probabilities of given tokens: the one readout behind the methods' objective
(``methods.objective.weighted_log_prob``) and the evaluation's answer scores (``eval.sources``).

The token at position i is predicted by the logits at position i − 1, so a readout names the positions
whose logits are read and the token each one should predict. Only those positions' logits are computed
(``logits_to_keep``, never ``[T, V]``), and ``log p = logit − logsumexp(logits)``, so no ``[.., V]``
log-softmax is kept for a backward pass.

- ``token_log_probs``: one forward of a batch, the log-prob at each read position ``[B, M]``.
- ``cached_token_log_probs``: the same on top of kept keys and values, returning the new cache.
- ``answer_log_probs``: ``Σ log p(answer | prompt)`` of one answer after each of many prompts of any
  lengths, in right-padded batches within a logit budget.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .errors import SpanTraceError
from .offload import execution_device

LOGIT_BUDGET = 2**26  # float32 logits answer_log_probs keeps at once (256 MiB)


def token_log_probs(
    model: torch.nn.Module,
    positions: torch.Tensor,
    targets: torch.Tensor,
    *,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    **extra: Any,
) -> torch.Tensor:
    """``log p(targets | logits at positions)`` for each row of a batch -> ``[B, M]`` float32.

    positions: ``[M]`` (the same for every row) or ``[B, M]`` long; targets: the same shape (``[M]`` is
    shared by the rows). input_ids ``[B, T]`` or inputs_embeds ``[B, T, D]``; attention_mask ``[B, T]``;
    ``extra`` goes to the forward as given (a vision-language model's position ids or token types).
    """
    values, _ = _read(model, positions, targets, input_ids=input_ids, inputs_embeds=inputs_embeds,
                      attention_mask=attention_mask, use_cache=False, **extra)
    return values


def cached_token_log_probs(
    model: torch.nn.Module, positions: torch.Tensor, targets: torch.Tensor, input_ids: torch.Tensor, cache: Any
) -> tuple[torch.Tensor, Any]:
    """``token_log_probs`` of ``input_ids`` run after the keys and values in ``cache`` (None: from the start);
    ``positions`` count from the first of ``input_ids``. Returns the log-probs and the grown cache."""
    forward = inspect.signature(model.forward).parameters
    argument = "cache" if "cache" in forward else "past_key_values"  # renamed in transformers 5
    values, output = _read(model, positions, targets, input_ids=input_ids, use_cache=True, **{argument: cache})
    return values, getattr(output, "cache", None) or getattr(output, "past_key_values", None)


def _read(
    model: torch.nn.Module, positions: torch.Tensor, targets: torch.Tensor, **forward: Any
) -> tuple[torch.Tensor, Any]:
    """The forward with ``forward`` as its arguments: the log-probs ``[B, M]`` and the model's output."""
    given = forward["input_ids"] if forward.get("input_ids") is not None else forward["inputs_embeds"]
    device = given.device
    shared = positions.dim() == 1  # every row reads the same positions
    # Clones: the positions may have been made under inference_mode, and autograd cannot save such tensors.
    keep = (positions if shared else torch.unique(positions)).to(device).clone()  # unique: sorted
    output = model(logits_to_keep=keep, return_dict=True, **forward)
    logits = output.logits.float()  # [B, K, V]
    if not shared:  # each row's positions among the kept ones
        index = torch.searchsorted(keep, positions.to(device))  # [B, M]
        logits = logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))  # [B, M, V]
    targets = targets.to(device).clone()
    targets = targets.expand(logits.shape[0], -1) if targets.dim() == 1 else targets  # [B, M]
    chosen = logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)
    return chosen, output


def answer_log_probs(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], answer: Sequence[int], *, batch_size: int | None = None
) -> np.ndarray:
    """``Σ log p(answer | prompt)`` for each prompt (teacher-forced, summed over the answer's tokens).

    Prompts of similar length go together: right-padded (causal attention keeps the padding out of every
    real position), at most ``LOGIT_BUDGET`` logits a batch (and ``batch_size`` prompts, when given).
    """
    answer = [int(i) for i in answer]
    if not answer or not prompts or any(len(p) == 0 for p in prompts):
        raise SpanTraceError("answer_log_probs needs a non-empty answer and non-empty prompts")
    vocab = model.get_input_embeddings().num_embeddings
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    values = np.zeros(len(prompts))
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (batch_size is None or stop - start < batch_size):
            span = len(prompts[order[stop]]) - len(prompts[order[start]]) + len(answer)
            if (stop - start + 1) * span * vocab > LOGIT_BUDGET:
                break
            stop += 1
        batch = [order[i] for i in range(start, stop)]
        values[batch] = _padded_batch(model, [prompts[i] for i in batch], answer)
        start = stop
    return values


def _padded_batch(model: torch.nn.Module, prompts: list[Sequence[int]], answer: list[int]) -> np.ndarray:
    lengths = [len(p) for p in prompts]
    total = max(lengths) + len(answer) - 1  # the last answer token is read, never fed
    ids = torch.zeros(len(prompts), total, dtype=torch.long)
    mask = torch.zeros(len(prompts), total, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        sequence = [int(i) for i in prompt] + answer[:-1]
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
    # Row r's answer token j is predicted by the logits at its position length_r − 1 + j.
    positions = torch.tensor(lengths)[:, None] - 1 + torch.arange(len(answer))[None, :]  # [B, A]
    device = execution_device(model.get_input_embeddings()) or torch.device("cpu")  # not meta when offloaded
    with torch.inference_mode():
        values = token_log_probs(model, positions, torch.tensor(answer), input_ids=ids.to(device),
                                 attention_mask=mask.to(device))
    return values.double().sum(dim=1).cpu().numpy()

"""Greedy generation with a progress bar (the text to trace when the user gives none)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel


class _ProgressStreamer:
    """A ``generate`` streamer that advances a progress bar by one per new token."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar = tqdm(total=total, desc="generating", unit="tok", disable=not enabled, leave=False)
        self._seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self._seen_prompt:  # the first call carries the prompt
            self._seen_prompt = True
            return
        self._bar.update(1)

    def end(self) -> None:
        self._bar.close()


@torch.inference_mode()
def greedy_generate(
    model: PreTrainedModel,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    progress: bool = True,
    model_inputs: dict[str, torch.Tensor] | None = None,
) -> list[int]:
    """The greedy continuation of ``prompt_ids``: new token ids only, EOS kept when reached. ``model_inputs``
    (images) go to ``generate`` as given."""
    device = next(model.parameters()).device
    inputs = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    config = model.generation_config
    eos = config.eos_token_id if config.eos_token_id is not None else model.config.eos_token_id
    pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
    output = model.generate(
        inputs,
        attention_mask=torch.ones_like(inputs),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad,
        streamer=_ProgressStreamer(max_new_tokens, progress),
        temperature=None,
        top_p=None,
        top_k=None,
        **{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in (model_inputs or {}).items()},
    )
    return [int(t) for t in output[0, len(prompt_ids) :]]

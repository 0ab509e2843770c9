"""Greedy generation with a progress bar (the text to trace when the user gives none).

Each step's logits are checked to be finite: a model whose forward went NaN or infinite stops with
``NonFiniteError`` instead of emitting token 0 (the argmax of NaN) over and over.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel

from .errors import NonFiniteError
from .offload import execution_device


class NonFiniteLogitsError(NonFiniteError):
    """Generation's logits went non-finite; ``ids`` are the tokens read so far (prompt + generated)."""

    def __init__(self, message: str, ids: list[int]) -> None:
        super().__init__(message)
        self.ids = ids


class _FiniteLogits(LogitsProcessor):
    """Stops generation with NonFiniteLogitsError at the first step whose logits hold NaN or infinity."""

    def __init__(self, prompt_length: int, dtype: torch.dtype) -> None:
        self.prompt_length = prompt_length
        self.dtype = dtype

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not bool(torch.isfinite(scores).all()):
            step = input_ids.shape[1] - self.prompt_length  # how many tokens were generated before this one
            name = str(self.dtype).removeprefix("torch.")
            raise NonFiniteLogitsError(
                f"the model's logits went non-finite while generating token {step} (dtype {name}): "
                + ("load it in float32 or bfloat16" if self.dtype == torch.float16 else "its weights may be corrupt"),
                [int(i) for i in input_ids[0]],
            )
        return scores


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
    device = execution_device(model.get_input_embeddings()) or torch.device("cpu")  # not meta when offloaded
    inputs = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    config = model.generation_config
    eos = config.eos_token_id if config.eos_token_id is not None else model.config.eos_token_id
    pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
    dtype = next(model.parameters()).dtype
    output = model.generate(
        inputs,
        logits_processor=LogitsProcessorList([_FiniteLogits(len(prompt_ids), dtype)]),
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

"""The context length a model was trained on, and the guard against inputs longer than that.

The length comes from the model's config (``max_position_embeddings``; GPT-2's ``n_positions`` under that
name or its own; a multimodal wrapper's text config). Past it, a model with rotary or other relative positions
still runs, but its attention was never trained there and the scores mean little: such an input is refused
unless the caller passes ``allow_long=True``, and then a warning is kept. A model with learned absolute
positions (GPT-2's ``wpe``) has no position past its table at all: it is refused always.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .errors import InputError

# Config fields that hold the trained context length, in the order they are read.
LENGTH_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
# Attributes of a base model that hold a table of learned absolute positions.
POSITION_TABLES = ("wpe", "embed_positions", "position_embeddings")


@dataclass(frozen=True)
class ContextLimit:
    """The longest input a model was trained on: ``tokens``, read from config field ``field``; ``hard`` when the
    model cannot run past it (learned absolute positions)."""

    tokens: int
    field: str
    hard: bool


def context_limit(model: nn.Module) -> ContextLimit | None:
    """``model``'s trained context length from its config, or None when the config gives none."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for field in LENGTH_FIELDS:
        value = getattr(text, field, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            break
    else:
        return None
    base = getattr(model, "base_model", model)
    for name in POSITION_TABLES:
        table = getattr(base, name, None)
        if isinstance(table, nn.Embedding):  # one learned row per position: nothing exists past the table
            return ContextLimit(min(value, table.num_embeddings), field, True)
    return ContextLimit(value, field, False)


def check_length(limit: ContextLimit | None, num_tokens: int, *, allow_long: bool) -> str | None:
    """None when ``num_tokens`` fit ``limit``; past it, a warning to keep when ``allow_long`` lets the input
    through, else InputError with the numbers (always InputError for a ``hard`` limit)."""
    if limit is None or num_tokens <= limit.tokens:
        return None
    if limit.hard:
        raise InputError(
            f"the input has {num_tokens} tokens; this model has learned positions for {limit.tokens} only "
            f"({limit.field}) and cannot run past them: shorten the prompt or the output"
        )
    if not allow_long:
        raise InputError(
            f"the input has {num_tokens} tokens; this model was trained on {limit.tokens} ({limit.field}): "
            "pass allow_long=True (--allow-long) to trace anyway"
        )
    return (
        f"the input has {num_tokens} tokens, past the {limit.tokens} this model was trained on ({limit.field}): "
        "scores past the trained length mean little"
    )


def room_to_generate(limit: ContextLimit | None, prompt_tokens: int, max_new_tokens: int, *, allow_long: bool) -> int:
    """How many tokens generation may add after ``prompt_tokens``: ``max_new_tokens``, cut where the context
    ends unless ``allow_long`` (and never past a ``hard`` limit); InputError when the prompt leaves no room."""
    check_length(limit, prompt_tokens, allow_long=allow_long)
    if limit is None or (allow_long and not limit.hard):
        return max_new_tokens
    room = limit.tokens - prompt_tokens
    if room < 1:
        raise InputError(
            f"the prompt has {prompt_tokens} tokens, the whole context this model was trained on "
            f"({limit.tokens}, {limit.field}): no room is left to generate; shorten the prompt or pass `output=`"
        )
    return min(max_new_tokens, room)

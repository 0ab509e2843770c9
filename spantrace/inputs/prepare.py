"""A run's inputs, start to end: render, tokenise, and give every token its character range.

``prepare`` is the one prompt pipeline: ``Model.run``, the evaluation and the viewer all build their token ids
and ``Layout`` through it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import InputError
from ..text.charmap import build_char_map
from ..text.layout import CharRange, Layout, Segment, build_layout
from ..text.pieces import content_end
from ..text.tokens import special_ids
from .given import Document, Message, parse_documents, parse_messages
from .images import attach_images, conversation_images
from .render import Rendered, documents_target, has_chat_template, message_contents, render_conversation, render_prompt


def encode_rendered(
    tokenizer: Any, rendered: Rendered, *, add_special_tokens: bool
) -> tuple[list[int], list[CharRange]]:
    """Token ids of ``rendered.text`` and each token's character range (from the tokenizer's offset mapping).

    Tokenizers without offsets (slow ones) get ranges from decoding growing prefixes of the ids."""
    try:
        encoded = tokenizer(rendered.text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        offsets = [(int(a), int(b)) for a, b in encoded["offset_mapping"]]
        return [int(i) for i in encoded["input_ids"]], offsets
    except (NotImplementedError, ValueError, TypeError, KeyError):
        ids = [int(i) for i in tokenizer(rendered.text, add_special_tokens=add_special_tokens)["input_ids"]]
        chars = build_char_map(tokenizer, ids)
        return ids, list(zip(chars.starts, chars.ends, strict=True))


# --- a run's inputs, start to end ------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """A run's context, tokenised, and its output when given (``output_ids`` None: generate it).

    output_segments: the given last assistant turn's content and tool calls, in ``output_text`` characters.
    output_message: the index the last assistant message has (given or generated).
    model_inputs: what the processor made of the images (``pixel_values``, ``image_grid_thw``, …), for the
    model's forward; None without images.
    """

    context: Rendered
    ids: list[int]
    offsets: list[CharRange]
    special: set[int]
    source: str
    output_message: int
    output_text: str | None = None
    output_ids: list[int] | None = None
    output_offsets: list[CharRange] | None = None
    output_segments: list[Segment] = field(default_factory=list)
    model_inputs: dict[str, Any] | None = None


def prepare(
    tokenizer: Any,
    *,
    prompt: str | None = None,
    messages: Any = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Any = None,
    documents_message: int | None = None,
    output: str | None = None,
    chat: bool = True,
    answer_prefix: str = "",
    processor: Any = None,
) -> Prepared:
    """Render and tokenise a prompt or a conversation (with documents and tools) for ``Model.run``.

    ``documents_message`` (with ``messages``) is the index in ``messages`` of the user or system message the
    documents open (negative: from the end); None puts them in the last user message.

    ``answer_prefix`` (with ``prompt``) is text the assistant's turn starts with, appended to the rendered
    context after the generation prompt; it is scaffolding (a ``"scaffold"`` segment, template tokens), so
    the output that follows it is the model's own.

    A conversation whose last message is the assistant's is traced as given: that message is the output
    (rendered by the template as it would be generated); otherwise the output is ``output`` or generated.

    Messages with images need ``processor`` (the model's): its chat template renders them, and its token ids
    and pixels (``Prepared.model_inputs``) are the model's input (``inputs.images``)."""
    docs = parse_documents(documents)
    special = special_ids(tokenizer)
    if messages is None:
        if tools is not None:
            raise InputError("`tools=` goes with `messages=`; a plain prompt has no tool calls")
        if documents_message is not None:
            raise InputError("`documents_message` picks a message of `messages=`; a plain prompt's documents open it")
        context = render_prompt(tokenizer, prompt, documents=docs, chat=chat)  # type: ignore[arg-type]
        context = _with_answer_prefix(context, answer_prefix)
        chat_rendered = chat and has_chat_template(tokenizer)
        ids, offsets = encode_rendered(tokenizer, context, add_special_tokens=not chat_rendered)
        prepared = Prepared(context, ids, offsets, special, "chat" if chat_rendered else "text", output_message=1)
        return _with_output(tokenizer, prepared, output, [])
    if prompt is not None:
        raise InputError("give either `prompt` or `messages`, not both")
    if answer_prefix:
        raise InputError("`answer_prefix` goes with `prompt=`; a conversation is traced as its messages give it")
    if not chat:
        raise InputError("messages are rendered with the model's chat template; chat=False is for a plain prompt")
    if tools is not None and (not isinstance(tools, Sequence) or not all(isinstance(t, Mapping) for t in tools)):
        raise InputError("`tools` must be a list of tool definitions (dicts)")
    parsed = parse_messages(messages)
    given_turn = parsed[-1].role == "assistant"
    if given_turn and output is not None:
        raise InputError("the conversation ends with an assistant message, which is traced; leave out `output=`")
    history = parsed[:-1] if given_turn else parsed
    if not history:
        raise InputError("the conversation has nothing before the assistant's turn; start it with a user message")
    target = documents_target(parsed, documents_message, bool(docs))  # an index into the messages as given
    images = conversation_images(history)
    if images and processor is None:
        raise InputError(f"message {images[0][0]} has an image, which needs the model's processor; load a model "
                         "that has one, or pass `processor=` to spantrace.load")
    renderer = processor if images and has_chat_template(processor) else tokenizer
    context = render_conversation(renderer, history, tools=tools, documents=docs, documents_message=target)
    ids, offsets = encode_rendered(tokenizer, context, add_special_tokens=False)
    text, segments = _given_turn(renderer, parsed, tools, docs, target, context) if given_turn else (output, [])
    model_inputs = None
    if images:
        context, ids, offsets, model_inputs = attach_images(processor, context, ids, offsets, images)
    prepared = Prepared(context, ids, offsets, special, "chat", output_message=len(history), model_inputs=model_inputs)
    return _with_output(tokenizer, prepared, text, segments)


def _with_answer_prefix(context: Rendered, answer_prefix: str) -> Rendered:
    """``context`` followed by ``answer_prefix``, the start of the assistant's turn, as a scaffold segment."""
    if not isinstance(answer_prefix, str):
        raise InputError(f"`answer_prefix` must be text; got {type(answer_prefix).__name__}")
    if not answer_prefix:
        return context
    start = len(context.text)
    prefix = Segment("scaffold", "answer prefix", (start, start + len(answer_prefix)))
    return Rendered(context.text + answer_prefix, [*context.segments, prefix])


def _given_turn(
    tokenizer: Any,
    messages: list[Message],
    tools: Any,
    documents: Sequence[Document],
    target: int | None,
    context: Rendered,
) -> tuple[str, list[Segment]]:
    """The last assistant message as the template writes it after the context, and its pieces (in its text)."""
    full = render_conversation(tokenizer, messages, tools=tools, documents=documents, documents_message=target,
                               add_generation_prompt=False)
    cut = len(context.text)
    if full.text.startswith(context.text):
        text = full.text[cut:].rstrip()
        pieces = [
            replace(s, chars=(s.chars[0] - cut, min(s.chars[1] - cut, len(text))))
            for s in full.segments
            if s.chars[0] >= cut and s.chars[0] < cut + len(text)
        ]
        return text, pieces
    # The template rewrites earlier turns once a new one is added: take the content (and calls) as they are.
    last = messages[-1]
    contents, inner = message_contents(tokenizer, [last], None, (), None)
    number = len(messages) - 1
    text = contents[0]
    pieces = [Segment("message", f"assistant #{number}", (0, len(text)), role="assistant", index=number,
                      message=number)]
    calls_before = sum(len(m.tool_calls) for m in messages[:-1])
    pieces += [Segment(kind, name.replace(f"tool_call {index} ", f"tool_call {index + calls_before} "), chars,
                       index=index + calls_before, message=number) for kind, name, index, chars in inner[0]]
    return text, pieces


def _with_output(tokenizer: Any, prepared: Prepared, output: str | None, segments: list[Segment]) -> Prepared:
    if output is None:
        return prepared
    if not isinstance(output, str) or not output:
        raise InputError("the output is empty; give the generated text, or leave it out to generate")
    ids, offsets = encode_rendered(tokenizer, Rendered(output), add_special_tokens=False)
    if not segments:
        end = _content_end(output, tokenizer)
        segments = [_output_message(prepared.output_message, (0, end))]
    return replace(prepared, output_text=output, output_ids=ids, output_offsets=offsets, output_segments=segments)


def _output_message(number: int, chars: CharRange) -> Segment:
    return Segment("message", f"assistant #{number}", chars, role="assistant", index=number, message=number)


def _content_end(text: str, tokenizer: Any) -> int:
    names = sorted(set(getattr(tokenizer, "all_special_tokens", []) or []), key=len, reverse=True)
    return content_end(text, names)


def complete_layout(tokenizer: Any, prepared: Prepared, generated: Sequence[int]) -> Layout:
    """The layout of context + output: the output's offsets come from the given text, or, for generated ids,
    from ``text.charmap.build_char_map`` (the decoded text)."""
    generated = [int(i) for i in generated]
    if prepared.output_ids is not None and prepared.output_ids == generated:
        out_text, out_offsets = prepared.output_text or "", list(prepared.output_offsets or [])
        out_segments = prepared.output_segments
    else:
        chars = build_char_map(tokenizer, generated)
        out_text, out_offsets = chars.text, list(zip(chars.starts, chars.ends, strict=True))
        out_segments = [_output_message(prepared.output_message, (0, _content_end(out_text, tokenizer)))]
    cut = len(prepared.context.text)
    text = prepared.context.text + out_text
    offsets = list(prepared.offsets) + [(a + cut, b + cut) for a, b in out_offsets]
    segments = list(prepared.context.segments)
    segments += [replace(s, chars=(s.chars[0] + cut, s.chars[1] + cut)) for s in out_segments]
    special = [i in prepared.special for i in list(prepared.ids) + generated]
    return build_layout(text, offsets, segments, special, source=prepared.source)

"""What the model reads: a prompt or a conversation rendered (by the chat template when there is one), with
the character range of every given piece — message contents, documents, tool calls, tool definitions.

Templates that do not know tool calls or tools get them as text (layout in ``spantrace.inputs``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from ..text.layout import CharRange, Segment
from .given import Document, Message, ToolCall, check_tool_results

_PLACEHOLDER = "\u2063spantrace-content-{}\u2063"  # marks where the template puts a message's content
_TOOLS_HEADER = "\n\nTools you can call:\n"


@dataclass(frozen=True)
class Rendered:
    """Text the model will read, with the character ranges of what was given (token ranges not yet known)."""

    text: str
    segments: list[Segment] = field(default_factory=list)


# --- rendering -------------------------------------------------------------------------------------


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _template_mentions(tokenizer: Any, word: str) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates
        template = template.get("default") or next(iter(template.values()), "")
    return isinstance(template, str) and word in template


def with_documents(text: str, documents: Sequence[Document]) -> tuple[str, list[tuple[int, CharRange]]]:
    """``text`` with ``documents`` placed before it (layout in the module docstring), and each document's
    ``(index, character range)`` in the result. Index -1 marks the layout's own text (headers, blank lines)."""
    parts: list[str] = []
    ranges: list[tuple[int, CharRange]] = []
    length = 0
    for index, document in enumerate(documents):
        header = f"Document {index + 1}: {document.name}\n" if document.name else f"Document {index + 1}\n"
        start = length + len(header)
        ranges.append((-1, (length, start)))
        ranges.append((index, (start, start + len(document.text))))
        piece = header + document.text + "\n\n"
        ranges.append((-1, (start + len(document.text), length + len(piece))))
        parts.append(piece)
        length += len(piece)
    return "".join(parts) + text, ranges


def _document_pieces(documents: Sequence[Document], ranges: list[tuple[int, CharRange]]) -> list:
    return [
        ("scaffold", "document header", 0, chars) if i < 0 else ("document", document_name(i, documents[i]), i, chars)
        for i, chars in ranges
    ]


def document_name(index: int, document: Document) -> str:
    return document.name or f"document {index + 1}"


def render_prompt(tokenizer: Any, prompt: str, *, documents: Sequence[Document] = (), chat: bool = True) -> Rendered:
    """A one-turn prompt (with documents) as the model reads it: in the chat template when asked and available."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("the prompt is empty; give some text to trace")
    if chat and has_chat_template(tokenizer):
        return render_conversation(tokenizer, [Message("user", prompt)], documents=documents)
    content, ranges = with_documents(prompt, documents)
    segments = [Segment("message", "user #0", (0, len(content)), role="user", index=0, message=0)]
    segments += [
        Segment(kind, name, chars, index=i, message=0) for kind, name, i, chars in _document_pieces(documents, ranges)
    ]
    return Rendered(content, segments)


def render_conversation(
    tokenizer: Any,
    messages: Sequence[Message],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Document] = (),
    documents_message: int | None = None,
    add_generation_prompt: bool = True,
) -> Rendered:
    """``messages`` rendered by ``tokenizer``'s chat template, with each content, document and tool call located.

    The documents open the message ``documents_message`` (an index into ``messages``; None: the last user one)."""
    if not has_chat_template(tokenizer):
        raise InputError("this tokenizer has no chat template, so it cannot render messages; give `prompt=` text")
    target = documents_target(messages, documents_message, bool(documents))
    native_calls = _template_mentions(tokenizer, "tool_calls")
    native_tools = tools is not None and _template_mentions(tokenizer, "tools")
    messages = list(messages)
    shift = 0  # 1 when spantrace adds a system message to hold the tool definitions
    if tools is not None and not native_tools and not any(m.role == "system" for m in messages):
        messages.insert(0, Message("system", ""))
        shift = 1
    opened = None if target is None else target + shift
    contents, inner = message_contents(tokenizer, messages, tools, documents, opened)

    def render(texts: Sequence[str]) -> str:
        dicts = []
        for message, text in zip(messages, texts, strict=True):
            entry: dict[str, Any] = {"role": message.role, "content": with_image_parts(message, text)}
            if native_calls and message.tool_calls:
                entry["tool_calls"] = [call.as_template_dict() for call in message.tool_calls]
            if message.tool_call_id is not None:
                entry["tool_call_id"] = message.tool_call_id
            if message.name is not None:
                entry["name"] = message.name
            dicts.append(entry)
        extra = {"tools": list(tools)} if native_tools and tools is not None else {}
        try:
            return tokenizer.apply_chat_template(
                dicts, add_generation_prompt=add_generation_prompt, tokenize=False, **extra
            )
        except Exception as error:  # a template's own raise_exception, or a jinja error
            raise InputError(f"the model's chat template rejected the conversation: {_one_line(error)}") from error

    text = render(contents)
    starts = _locate_contents(text, contents, render([_PLACEHOLDER.format(i) for i in range(len(contents))]))
    segments: list[Segment] = []
    answered = check_tool_results(messages)
    for number, (message, content, start) in enumerate(zip(messages, contents, starts, strict=True)):
        if start is None:
            continue
        given = number - shift
        if given >= 0:
            name = f"{message.role} #{given}" + (f" ({answered[number].name})" if number in answered else "")
            segments.append(
                Segment("message", name, (start, start + len(content)), role=message.role, index=given, message=given)
            )
        for kind, name, index, (a, b) in inner[number]:
            segments.append(Segment(kind, name, (start + a, start + b), index=index, message=max(given, 0)))
    if native_calls:
        segments += _locate_native_calls(text, messages, segments, shift)
    return Rendered(text, sorted(segments, key=lambda s: (s.chars[0], -s.chars[1])))


def with_image_parts(message: Message, text: str) -> str | list[dict[str, str]]:
    """What a template gets as a message's content: its text, or, with images, the parts in their order
    (``{"type": "image"}`` for each picture: the processor's template writes its image tokens)."""
    if not message.images:
        return text
    before, after = message.images_before, len(message.images) - message.images_before
    own_text = [{"type": "text", "text": text}] if text else []
    return [{"type": "image"}] * before + own_text + [{"type": "image"}] * after


def message_contents(
    tokenizer: Any,
    messages: Sequence[Message],
    tools: Sequence[Mapping[str, Any]] | None,
    documents: Sequence[Document],
    target: int | None,
) -> tuple[list[str], list[list[tuple[str, str, int, CharRange]]]]:
    """Each message's content as the template gets it, and the pieces inside it ``(kind, name, index, range)``:
    documents (in message ``target``), tool calls written as text, tool definitions in the system message."""
    native_calls = _template_mentions(tokenizer, "tool_calls")
    native_tools = tools is not None and _template_mentions(tokenizer, "tools")
    contents: list[str] = []
    inner: list[list[tuple[str, str, int, CharRange]]] = []
    call_index = 0
    for number, message in enumerate(messages):
        content, pieces = message.content, []
        if number == target and documents:
            content, ranges = with_documents(content, documents)
            pieces += _document_pieces(documents, ranges)
        if message.tool_calls and not native_calls:
            for call in message.tool_calls:
                opening, closing = ("\n" if content else "") + "<tool_call>\n", "\n</tool_call>"
                start = len(content) + len(opening)
                end = start + len(call.as_text())
                pieces.append(("scaffold", "tool call markup", 0, (len(content), start)))
                pieces.append(("tool_call", f"tool_call {call_index} ({call.name})", call_index, (start, end)))
                pieces.append(("scaffold", "tool call markup", 0, (end, end + len(closing))))
                content += opening + call.as_text() + closing
                call_index += 1
        elif message.tool_calls:
            call_index += len(message.tool_calls)
        if message.role == "system" and number == 0 and tools is not None and not native_tools:
            header = _TOOLS_HEADER if content else _TOOLS_HEADER.lstrip("\n")
            offset = len(content) + len(header)
            pieces.append(("scaffold", "tools header", 0, (len(content), offset)))
            content += header + "\n".join(_tool_texts(tools))
            pieces += _tool_ranges(tools, offset=offset)
        contents.append(content)
        inner.append(pieces)
    return contents, inner


def documents_target(messages: Sequence[Message], documents_message: int | None, has_documents: bool) -> int | None:
    """The index (≥ 0) of the message the documents open: ``documents_message`` checked (negative: from the
    end), or the last user message; None without documents."""
    if not has_documents:
        if documents_message is not None:
            raise InputError("`documents_message` says where documents go; give `documents=` too")
        return None
    if documents_message is None:
        last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
        if last_user is None:
            raise InputError("documents go into a user message, and this conversation has none; add a user message")
        return last_user
    count = len(messages)
    if isinstance(documents_message, bool) or not isinstance(documents_message, int):
        raise InputError(f"`documents_message` must be a message index (an int); got {documents_message!r}")
    if not -count <= documents_message < count:
        raise InputError(f"`documents_message` {documents_message} is out of range: the conversation has {count} "
                         f"messages (0..{count - 1}, or -{count}..-1 from the end)")
    index = documents_message % count
    if messages[index].role not in ("user", "system"):
        raise InputError(f"`documents_message` {documents_message} is message {index} ({messages[index].role}); "
                         "documents go into a user or system message")
    return index


def _tool_texts(tools: Sequence[Mapping[str, Any]]) -> list[str]:
    return [json.dumps(tool, ensure_ascii=False) for tool in tools]


def _tool_ranges(tools: Sequence[Mapping[str, Any]], *, offset: int) -> list[tuple[str, str, int, CharRange]]:
    ranges, position = [], offset
    for index, text in enumerate(_tool_texts(tools)):
        ranges.append(("tools", f"tool {index} ({_tool_name(tools[index], index)})", index,
                       (position, position + len(text))))
        position += len(text) + 1
    return ranges


def _tool_name(tool: Mapping[str, Any], index: int) -> str:
    function = tool.get("function", tool)
    name = function.get("name") if isinstance(function, Mapping) else None
    return str(name) if name else f"tool {index}"


def _locate_contents(text: str, contents: Sequence[str], skeleton: str) -> list[int | None]:
    """Where each content starts in ``text``. ``skeleton`` is the same conversation rendered with placeholders
    for the contents: it gives the template text before each one, so a content that repeats its role name
    ("user") is not found inside the header. A content the template changed (trimmed, dropped) is searched
    for as is, then stripped; None when it is not there at all."""
    starts: list[int | None] = []
    cursor, skeleton_cursor = 0, 0
    for index, content in enumerate(contents):
        placeholder = _PLACEHOLDER.format(index)
        found_in_skeleton = skeleton.find(placeholder, skeleton_cursor)
        start = None
        if found_in_skeleton >= 0:
            before = skeleton[skeleton_cursor:found_in_skeleton]
            expected = cursor + len(before)
            if text.startswith(before, cursor) and text.startswith(content, expected):
                start = expected
            skeleton_cursor = found_in_skeleton + len(placeholder)
        if start is None and content:
            start = _find(text, content, cursor)
        starts.append(start)
        if start is not None:
            cursor = start + len(content)
    return starts


def _find(text: str, content: str, cursor: int) -> int | None:
    found = text.find(content, cursor)
    if found >= 0:
        return found
    stripped = content.strip()
    found = text.find(stripped, cursor) if stripped else -1
    return (found - content.find(stripped)) if found >= 0 else None


def _locate_native_calls(
    text: str, messages: Sequence[Message], segments: Sequence[Segment], shift: int
) -> list[Segment]:
    """Tool calls rendered by the template itself: from the function name to the end of its arguments (or, when
    the arguments are written some other way, to the start of the next given piece)."""
    found: list[Segment] = []
    starts = sorted(s.chars[0] for s in segments)
    call_index, cursor = 0, 0
    for number, message in enumerate(messages):
        own = next((s for s in segments if s.kind == "message" and s.message == number - shift), None)
        if own is not None:
            cursor = max(cursor, own.chars[0])
        for call in message.tool_calls:
            begin = text.find(call.name, cursor)
            if begin >= 0:
                end = _arguments_end(text, call, begin)
                if end is None:
                    end = next((s for s in starts if s > begin), len(text))
                found.append(Segment("tool_call", f"tool_call {call_index} ({call.name})", (begin, end),
                                     index=call_index, message=number - shift))
                cursor = end
            call_index += 1
    return found


def _arguments_end(text: str, call: ToolCall, begin: int) -> int | None:
    if isinstance(call.arguments, str):
        candidates = [call.arguments]
    else:
        candidates = [json.dumps(call.arguments, ensure_ascii=False), json.dumps(call.arguments),
                      json.dumps(call.arguments, ensure_ascii=False, separators=(",", ":"))]
    for candidate in candidates:
        where = text.find(candidate, begin)
        if where >= 0:
            return where + len(candidate)
    return None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__



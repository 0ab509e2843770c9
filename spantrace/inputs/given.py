"""What people give, checked: chat messages (with tool calls and tool results) and documents.

Conversations use the usual form: ``{"role": "system" | "user" | "assistant" | "tool", "content": str}``;
an assistant message may carry ``"tool_calls": [{"id": ..., "type": "function", "function": {"name": ...,
"arguments": {...}}}]`` (``{"name": ..., "arguments": ...}`` is accepted too), and a tool message answers
one of them (by ``"tool_call_id"``, or in order). A user or system message's content may be a list of parts,
``{"type": "text", "text": ...}`` and ``{"type": "image", "image": <PIL image or local path>}``, the images
before or after the text (the model's processor renders them). Malformed input is an ``InputError`` of one line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ToolCall:
    """One call an assistant message makes: the function's name and its arguments (a dict or a string)."""

    name: str
    arguments: Any
    id: str | None = None

    def as_text(self) -> str:
        """The call as JSON text, the way spantrace writes it for templates that do not render tool calls."""
        return json.dumps({"name": self.name, "arguments": self.arguments}, ensure_ascii=False)

    def as_template_dict(self) -> dict[str, Any]:
        call: dict[str, Any] = {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        if self.id is not None:
            call["id"] = self.id
        return call


@dataclass(frozen=True)
class Message:
    """A checked chat message. ``tool_call_id``/``name`` belong to tool results. images: the message's pictures
    (PIL images, RGB), the first ``images_before`` of them before its text, the rest after it."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    images: tuple[Any, ...] = ()
    images_before: int = 0


@dataclass(frozen=True)
class Document:
    """A retrieved document: its text and the name shown in its header and in source tables."""

    text: str
    name: str | None = None


def parse_messages(messages: Any) -> list[Message]:
    """Check a conversation and return it as ``Message`` objects; InputError (one line) when it is malformed."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InputError('messages must be a non-empty list of {"role": ..., "content": ...} objects')
    parsed = [_parse_message(number, message) for number, message in enumerate(messages)]
    check_tool_results(parsed)
    return parsed


def _parse_message(number: int, message: Any) -> Message:
    if not isinstance(message, Mapping):
        raise InputError(f'message {number} is not an object; write {{"role": "user", "content": "..."}}')
    role = message.get("role")
    if role is None:
        raise InputError(f"message {number} has no 'role'; give one of {', '.join(ROLES)}")
    if role not in ROLES:
        raise InputError(f"message {number} has an unknown role {role!r}; use one of {', '.join(ROLES)}")
    raw_calls = message.get("tool_calls") or ()
    if isinstance(raw_calls, (str, bytes, Mapping)) or not isinstance(raw_calls, Sequence):
        raise InputError(f'message {number}: tool_calls must be a list of {{"function": {{"name": ...}}}} objects')
    calls = tuple(_parse_tool_call(number, k, call) for k, call in enumerate(raw_calls))
    if calls and role != "assistant":
        raise InputError(f"message {number} ({role}) has tool_calls; only assistant messages make tool calls")
    content = message.get("content")
    if content is None and not calls:
        raise InputError(f"message {number} ({role}) has no 'content'; give its text")
    images, images_before = _content_images(number, content)
    if images and role not in ("user", "system"):
        raise InputError(f"message {number} ({role}) has an image; images go into a user or system message")
    return Message(
        role=role,
        content=_content_text(number, content),
        images=images,
        images_before=images_before,
        tool_calls=calls,
        tool_call_id=_optional_str(message.get("tool_call_id")),
        name=_optional_str(message.get("name")),
    )


def _content_text(number: int, content: Any) -> str:
    """A message's content as text: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, Sequence) else ()
    texts = [p for p in parts if not _is_image_part(p)]
    if parts and all(isinstance(p, Mapping) and isinstance(p.get("text"), str) for p in texts):
        return "".join(part["text"] for part in texts)
    raise InputError(
        f"message {number}'s content must be text, or a list of {{\"type\": \"text\", \"text\": ...}} and "
        '{"type": "image", "image": ...} parts'
    )


def _is_image_part(part: Any) -> bool:
    return isinstance(part, Mapping) and part.get("type") == "image"


def _content_images(number: int, content: Any) -> tuple[tuple[Any, ...], int]:
    """The images of a content list, opened and checked, and how many come before its text."""
    if isinstance(content, (str, bytes)) or not isinstance(content, Sequence):
        return (), 0
    kinds = ["image" if _is_image_part(p) else "text" for p in content]
    if "image" not in kinds:
        return (), 0
    if "text" in kinds and "image" in kinds[kinds.index("text"): len(kinds) - kinds[::-1].index("text")]:
        raise InputError(f"message {number} puts an image between text parts; put its images before or after the "
                         "text, or split it into two messages")
    images = tuple(open_image(number, part.get("image")) for part in content if _is_image_part(part))
    return images, kinds.index("text") if "text" in kinds else len(images)


def open_image(number: int, image: Any) -> Any:
    """``image`` (a PIL image, or a path to an image file) as an RGB PIL image; InputError when it is none."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if not isinstance(image, (str, Path)):
        raise InputError(f'message {number}: an image part needs "image": a PIL image or a local file path; '
                         f"got {type(image).__name__}")
    path = Path(image)
    if not path.is_file():
        raise InputError(f"message {number}: image file {str(path)!r} does not exist; give a local path to an image")
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        what = f"message {number}: {str(path)!r} is not an image file PIL can read ({error})"
        raise InputError(what[:300]) from error


def _parse_tool_call(number: int, index: int, call: Any) -> ToolCall:
    function = call.get("function", call) if isinstance(call, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(name, str) or not name:
        raise InputError(
            f'message {number}: tool call {index} needs a function name, e.g. {{"function": {{"name": "search", '
            '"arguments": {...}}}'
        )
    arguments = function.get("arguments", {})
    return ToolCall(name=name, arguments=arguments, id=_optional_str(call.get("id")))


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def check_tool_results(messages: Sequence[Message]) -> dict[int, ToolCall]:
    """Every tool result answers a call made before it: by ``tool_call_id`` when given, else in order.
    Returns the call each tool message answers, by message index."""
    open_calls: list[ToolCall] = []
    answered: dict[int, ToolCall] = {}
    for number, message in enumerate(messages):
        if message.role == "assistant" and message.tool_calls:
            open_calls = list(message.tool_calls)
        elif message.role == "tool":
            match = _matching_call(open_calls, message.tool_call_id)
            if match is None:
                wanted = f" with id {message.tool_call_id!r}" if message.tool_call_id is not None else ""
                raise InputError(
                    f"message {number} is a tool result with no matching tool call{wanted} before it; "
                    "put an assistant message with that tool call first"
                )
            open_calls.remove(match)
            answered[number] = match
        elif message.role == "user":
            open_calls = []
    return answered


def _matching_call(calls: list[ToolCall], call_id: str | None) -> ToolCall | None:
    if call_id is None:
        return calls[0] if calls else None
    return next((call for call in calls if call.id == call_id), None)


def parse_documents(documents: Any) -> list[Document]:
    """Check ``documents`` (strings or ``{"name": ..., "text": ...}``) and return them as ``Document`` objects."""
    if documents is None:
        return []
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise InputError('documents must be a list of strings or {"name": ..., "text": ...} objects')
    parsed = []
    for index, document in enumerate(documents):
        if isinstance(document, str):
            text, name = document, None
        elif isinstance(document, Mapping) and isinstance(document.get("text"), str):
            text, name = document["text"], _optional_str(document.get("name"))
        else:
            raise InputError(f'document {index} must be a string or {{"name": ..., "text": ...}} with text')
        if not text.strip():
            raise InputError(f"document {index} is empty; give its text")
        parsed.append(Document(text=text, name=name))
    return parsed


def parse_conversation(data: Any) -> tuple[list[Message], list[dict[str, Any]] | None]:
    """A conversation read from JSON: a list of messages, or ``{"messages": [...], "tools": [...]}``."""
    tools = None
    if isinstance(data, Mapping):
        if "messages" not in data:
            raise InputError('a conversation object needs a "messages" list (and may have "tools")')
        data, tools = data["messages"], data.get("tools")
        if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, Mapping) for t in tools)):
            raise InputError('"tools" must be a list of tool definitions (objects)')
    return parse_messages(data), tools


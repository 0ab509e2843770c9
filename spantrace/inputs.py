"""Inputs → tokens with character ranges: prompts, chat messages, tool calls and documents.

This is the one place where what a person gives (a prompt, a conversation, retrieved documents) becomes
the text the model reads, its tokens, and a ``Layout`` saying which characters and tokens came from which
message, document or tool call, and which are chat-template scaffolding.

Conversations use the usual form: ``{"role": "system" | "user" | "assistant" | "tool", "content": str}``;
an assistant message may carry ``"tool_calls": [{"id": ..., "type": "function", "function": {"name": ...,
"arguments": {...}}}]`` (``{"name": ..., "arguments": ...}`` is accepted too), and a tool message answers
one of them (by ``"tool_call_id"``, or in order). The model's chat template renders the conversation;
each message's content is then found in the rendered text, and the tokenizer's offset mapping on that
text gives every token's character range. Templates that do not know tool calls or tools get them as
text, in this layout (the JSON is ``json.dumps`` of the call or the tool definition):

    assistant content            →   CONTENT\\n<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>
    tools=[...]                  →   the system message, then \\n\\nTools you can call:\\n{tool JSON}\\n{tool JSON}

Documents (``documents=["text", {"name": ..., "text": ...}]``) go at the start of the prompt, or of one
message of a conversation (the last user message, or the user or system message that
``documents_message=`` names by its index in ``messages``, negative from the end), before its own text:

    Document 1: NAME\\nTEXT\\n\\nDocument 2\\nTEXT\\n\\nPROMPT

(the header is ``Document N`` when a document has no name). Headers, role markers, separators, the
template's own default system prompt and every special token are *template* tokens: text nobody gave.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import InputError

ROLES = ("system", "user", "assistant", "tool")
SEGMENT_KINDS = ("message", "document", "tool_call", "tools", "scaffold")  # scaffold: layout text spantrace adds
_PLACEHOLDER = "\u2063spantrace-content-{}\u2063"  # marks where the template puts a message's content
_TOOLS_HEADER = "\n\nTools you can call:\n"

CharRange = tuple[int, int]


# --- what people give ------------------------------------------------------------------------------


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
    """A checked chat message. ``tool_call_id``/``name`` belong to tool results."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


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
    _check_tool_results(parsed)
    return parsed


def _parse_message(number: int, message: Any) -> Message:
    if not isinstance(message, Mapping):
        raise InputError(f'message {number} is not an object; write {{"role": "user", "content": "..."}}')
    role = message.get("role")
    if role is None:
        raise InputError(f"message {number} has no 'role'; give one of {', '.join(ROLES)}")
    if role not in ROLES:
        raise InputError(f"message {number} has an unknown role {role!r}; use one of {', '.join(ROLES)}")
    calls = tuple(_parse_tool_call(number, k, call) for k, call in enumerate(message.get("tool_calls") or ()))
    if calls and role != "assistant":
        raise InputError(f"message {number} ({role}) has tool_calls; only assistant messages make tool calls")
    content = message.get("content")
    if content is None and not calls:
        raise InputError(f"message {number} ({role}) has no 'content'; give its text")
    return Message(
        role=role,
        content=_content_text(number, content),
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
    if parts and all(isinstance(p, Mapping) and isinstance(p.get("text"), str) for p in parts):
        return "".join(part["text"] for part in content)
    raise InputError(f"message {number}'s content must be text (or a list of {{\"type\": \"text\", \"text\": ...}})")


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


def _check_tool_results(messages: Sequence[Message]) -> dict[int, ToolCall]:
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


# --- where things sit ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """A piece of the input that somebody gave: a message's content, a document, a tool call, tool definitions.

    chars: ``[start, end)`` in the layout's text. tokens: ``[start, end)`` token positions once tokenised
    (None when no token falls in it). role/message: the message's role and index (documents and tool calls
    carry the message they sit in). index: the piece's number among its kind (message 3, document 0, …).
    """

    kind: str
    name: str
    chars: CharRange
    tokens: tuple[int, int] | None = None
    role: str | None = None
    index: int = 0
    message: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "chars": list(self.chars),
            "tokens": list(self.tokens) if self.tokens is not None else None,
            "role": self.role,
            "index": self.index,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Segment:
        tokens = data.get("tokens")
        return cls(
            kind=str(data["kind"]),
            name=str(data["name"]),
            chars=(int(data["chars"][0]), int(data["chars"][1])),
            tokens=(int(tokens[0]), int(tokens[1])) if tokens is not None else None,
            role=data.get("role"),
            index=int(data.get("index", 0)),
            message=data.get("message"),
        )


@dataclass(frozen=True)
class Rendered:
    """Text the model will read, with the character ranges of what was given (token ranges not yet known)."""

    text: str
    segments: list[Segment] = field(default_factory=list)


@dataclass(frozen=True)
class Layout:
    """Every token's character range in ``text`` (the prompt followed by the generation), the given pieces
    (``segments``), and which tokens are template scaffolding or special tokens (``template``).

    source: ``"chat"`` (rendered by the chat template), ``"text"`` (a plain prompt) or ``"tokens"`` (built
    from token strings alone, for runs made from token ids: no messages or documents).
    """

    text: str
    offsets: list[CharRange]
    segments: list[Segment]
    template: list[bool]
    source: str = "chat"

    def of_kind(self, kind: str) -> list[Segment]:
        return [segment for segment in self.segments if segment.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "offsets": [list(o) for o in self.offsets],
            "segments": [s.to_dict() for s in self.segments],
            "template": [bool(t) for t in self.template],
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Layout:
        return cls(
            text=str(data["text"]),
            offsets=[(int(a), int(b)) for a, b in data["offsets"]],
            segments=[Segment.from_dict(s) for s in data["segments"]],
            template=[bool(t) for t in data["template"]],
            source=str(data.get("source", "chat")),
        )


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
    contents, inner = _contents(tokenizer, messages, tools, documents, None if target is None else target + shift)

    def render(texts: Sequence[str]) -> str:
        dicts = []
        for message, text in zip(messages, texts, strict=True):
            entry: dict[str, Any] = {"role": message.role, "content": text}
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
    answered = _check_tool_results(messages)
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


def _contents(
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


# --- tokenising ------------------------------------------------------------------------------------


def special_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special tokens (BOS, EOS, ``<|im_start|>``, …)."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(int(i) for i, token in decoder.items() if getattr(token, "special", False))
    return ids


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
        from .spans import build_char_map

        ids = [int(i) for i in tokenizer(rendered.text, add_special_tokens=add_special_tokens)["input_ids"]]
        chars = build_char_map(tokenizer, ids)
        return ids, list(zip(chars.starts, chars.ends, strict=True))


def anchor(text: str, chars: CharRange) -> int | None:
    """The character that places a token: its first non-space character (its first one when it is all
    whitespace); None for a token that carries no character (an added BOS)."""
    start, end = chars
    if start >= end:
        return None
    for position in range(start, min(end, len(text))):
        if not text[position].isspace():
            return position
    return start


def assign(text: str, offsets: Sequence[CharRange], ranges: Sequence[CharRange]) -> list[int | None]:
    """For each token, the index of the range in ``ranges`` (sorted, disjoint) that holds its anchor; else None.
    Every token goes to at most one range, so pooled scores add up."""
    starts = [a for a, _ in ranges]
    owners: list[int | None] = []
    for chars in offsets:
        position = anchor(text, chars)
        owner = None
        if position is not None:
            k = bisect.bisect_right(starts, position) - 1
            if k >= 0 and ranges[k][0] <= position < ranges[k][1]:
                owner = k
        owners.append(owner)
    return owners


def build_layout(
    text: str,
    offsets: Sequence[CharRange],
    segments: Sequence[Segment],
    special: Sequence[bool],
    *,
    source: str,
) -> Layout:
    """The ``Layout`` of tokens with ``offsets`` in ``text``: token ranges of the segments, and the template mask
    (special tokens, and tokens whose anchor lies in no message, document or tool definition)."""
    import numpy as np

    segments = list(segments)
    given = assign(text, offsets, _merge([s.chars for s in segments if s.kind in ("message", "tools")]))
    scaffold = assign(text, offsets, _merge([s.chars for s in segments if s.kind == "scaffold"]))
    template = [bool(special[p]) or given[p] is None or scaffold[p] is not None for p in range(len(offsets))]
    anchors = np.array([-1 if (a := anchor(text, chars)) is None else a for chars in offsets], dtype=np.int64)
    placed = []
    for segment in segments:
        start, end = segment.chars
        inside = np.flatnonzero((anchors >= start) & (anchors < end))
        tokens = (int(inside[0]), int(inside[-1]) + 1) if inside.size else None
        placed.append(replace(segment, tokens=tokens))
    return Layout(text=text, offsets=[tuple(o) for o in offsets], segments=placed, template=template, source=source)


def _merge(ranges: Sequence[CharRange]) -> list[CharRange]:
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def layout_from_tokens(tokens: Sequence[str], special: Sequence[bool]) -> Layout:
    """A layout for a run made from token ids: the token strings joined, no messages or documents."""
    offsets, position = [], 0
    for token in tokens:
        offsets.append((position, position + len(token)))
        position += len(token)
    return Layout(text="".join(tokens), offsets=offsets, segments=[], template=[bool(s) for s in special],
                  source="tokens")



# --- a run's inputs, start to end ------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """A run's context, tokenised, and its output when given (``output_ids`` None: generate it).

    output_segments: the given last assistant turn's content and tool calls, in ``output_text`` characters.
    output_message: the index the last assistant message has (given or generated).
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
) -> Prepared:
    """Render and tokenise a prompt or a conversation (with documents and tools) for ``Model.run``.

    ``documents_message`` (with ``messages``) is the index in ``messages`` of the user or system message the
    documents open (negative: from the end); None puts them in the last user message.

    ``answer_prefix`` (with ``prompt``) is text the assistant's turn starts with, appended to the rendered
    context after the generation prompt; it is scaffolding (a ``"scaffold"`` segment, template tokens), so
    the output that follows it is the model's own.

    A conversation whose last message is the assistant's is traced as given: that message is the output
    (rendered by the template as it would be generated); otherwise the output is ``output`` or generated."""
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
    context = render_conversation(tokenizer, history, tools=tools, documents=docs, documents_message=target)
    ids, offsets = encode_rendered(tokenizer, context, add_special_tokens=False)
    prepared = Prepared(context, ids, offsets, special, "chat", output_message=len(history))
    if not given_turn:
        return _with_output(tokenizer, prepared, output, [])
    text, segments = _given_turn(tokenizer, parsed, tools, docs, target, context)
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
    contents, inner = _contents(tokenizer, [last], None, (), None)
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
    from .spans import content_end

    names = sorted(set(getattr(tokenizer, "all_special_tokens", []) or []), key=len, reverse=True)
    return content_end(text, names)


def complete_layout(tokenizer: Any, prepared: Prepared, generated: Sequence[int]) -> Layout:
    """The layout of context + output: the output's offsets come from the given text, or, for generated ids,
    from ``spans.build_char_map`` (the decoded text)."""
    generated = [int(i) for i in generated]
    if prepared.output_ids is not None and prepared.output_ids == generated:
        out_text, out_offsets = prepared.output_text or "", list(prepared.output_offsets or [])
        out_segments = prepared.output_segments
    else:
        from .spans import build_char_map

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

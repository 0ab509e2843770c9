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


Messages may hold images (``{"type": "image", "image": <PIL image or path>}`` parts): the model's processor
renders and tokenises them, and each image becomes an ``"image"`` segment with its grid (``images``,
docs/vision.md).

Modules: ``given`` (the forms people give, checked), ``render`` (what the model reads: the chat template, with
every given piece located), ``images`` (the processor's image tokens and pixels, each image located),
``prepare`` (tokenised, with each token's character range: the one pipeline that
``Model.run``, the evaluation and the viewer share). Layout types live in ``spantrace.text.layout``.
"""

from ..text.layout import CharRange, Layout, Segment, assign, build_layout, layout_from_tokens
from .given import Document, Message, ToolCall, parse_conversation, parse_documents, parse_messages
from .prepare import Prepared, complete_layout, encode_rendered, prepare
from .render import Rendered, document_name, documents_target, render_conversation, render_prompt, with_documents

__all__ = [
    "CharRange", "Document", "Layout", "Message", "Prepared", "Rendered", "Segment", "ToolCall", "assign",
    "build_layout", "complete_layout", "document_name", "documents_target", "encode_rendered",
    "layout_from_tokens", "parse_conversation", "parse_documents", "parse_messages", "prepare",
    "render_conversation", "render_prompt", "with_documents",
]

"""spantrace.inputs: conversations, tool calls and documents rendered with exact character and token ranges."""

from __future__ import annotations

import copy
import json
import re

import pytest

from spantrace import InputError
from spantrace.inputs import (
    Layout,
    Rendered,
    assign,
    build_layout,
    complete_layout,
    encode_rendered,
    layout_from_tokens,
    parse_conversation,
    parse_documents,
    parse_messages,
    prepare,
    render_conversation,
    with_documents,
)

CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
CHAT = [
    {"role": "system", "content": "You are a travel agent."},
    {"role": "user", "content": "user"},  # the role's own name: must not be found in the header
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "c1", "content": "Sunny, 24 C"},
    {"role": "assistant", "content": "It is sunny in Paris."},
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]

# A chat template that renders tool calls and tools itself (like many recent models'), for the native path.
NATIVE_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<call>{{ c.function.name }} "
    "{{ c.function.arguments | tojson }}</call>{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def text_of(layout_or_rendered, segment) -> str:
    return layout_or_rendered.text[segment.chars[0] : segment.chars[1]]


def test_every_message_is_found_where_the_template_put_it(tokenizer) -> None:
    rendered = render_conversation(tokenizer, parse_messages(CHAT[:-1]))
    messages = [s for s in rendered.segments if s.kind == "message"]
    assert [s.name for s in messages] == ["system #0", "user #1", "assistant #2", "tool #3 (get_weather)"]
    assert text_of(rendered, messages[0]) == "You are a travel agent."
    assert text_of(rendered, messages[1]) == "user"
    assert rendered.text[messages[1].chars[0] - 5 : messages[1].chars[0]] == "user\n"  # after the header
    assert text_of(rendered, messages[3]) == "Sunny, 24 C"
    # the SmolLM2 template knows no tool calls: spantrace writes the call as JSON in the content
    call = next(s for s in rendered.segments if s.kind == "tool_call")
    assert json.loads(text_of(rendered, call)) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert call.message == 2 and call.name == "tool_call 0 (get_weather)"


def test_tools_and_documents_get_their_own_ranges(tokenizer) -> None:
    documents = parse_documents(["Paris is in France.", {"name": "wiki", "text": "Lyon too."}])
    rendered = render_conversation(tokenizer, parse_messages(CHAT[:2]), tools=TOOLS, documents=documents)
    tools = [s for s in rendered.segments if s.kind == "tools"]
    assert len(tools) == 1 and json.loads(text_of(rendered, tools[0])) == TOOLS[0]
    docs = [s for s in rendered.segments if s.kind == "document"]
    assert [text_of(rendered, s) for s in docs] == ["Paris is in France.", "Lyon too."]
    assert [s.name for s in docs] == ["document 1", "wiki"]
    assert "Document 1\nParis is in France.\n\nDocument 2: wiki\nLyon too.\n\nuser" in rendered.text


def test_documents_message_picks_where_documents_go(tokenizer) -> None:
    documents = ["Paris is in France.", {"name": "wiki", "text": "Lyon too."}]
    header = "Document 1\nParis is in France.\n\nDocument 2: wiki\nLyon too.\n\n"
    chat = [*CHAT[:4], {"role": "user", "content": "And tomorrow?"}]  # two user messages: 1 and 4
    default = prepare(tokenizer, messages=chat, documents=documents)
    assert header + "And tomorrow?" in default.context.text  # the last user message, as before
    for index in (1, -4):  # the earlier user message, by its index or from the end
        prepared = prepare(tokenizer, messages=chat, documents=documents, documents_message=index)
        assert header + "user" in prepared.context.text and header + "And" not in prepared.context.text
        docs = [s for s in prepared.context.segments if s.kind == "document"]
        assert [text_of(prepared.context, s) for s in docs] == ["Paris is in France.", "Lyon too."]
        assert {s.message for s in docs} == {1}
    # a system message, with spantrace's own tools text after its content; the traced assistant turn keeps them
    given = prepare(tokenizer, messages=CHAT, tools=TOOLS, documents=documents, documents_message=0)
    assert header + "You are a travel agent.\n\nTools you can call:" in given.context.text
    docs = [s for s in given.context.segments if s.kind == "document"]
    assert [text_of(given.context, s) for s in docs] == ["Paris is in France.", "Lyon too."]
    assert given.output_text.startswith("It is sunny in Paris.")
    # the documents' message is counted in the messages as given, not after the tools' system message
    no_system = [{"role": "user", "content": "Weather?"}]
    added = prepare(tokenizer, messages=no_system, tools=TOOLS, documents=documents, documents_message=0)
    assert header + "Weather?" in added.context.text


def test_documents_message_errors(tokenizer) -> None:
    with pytest.raises(InputError, match=r"out of range: the conversation has 5 messages \(0..4, or -5..-1"):
        prepare(tokenizer, messages=CHAT, documents=["A."], documents_message=5)
    with pytest.raises(InputError, match="out of range"):
        prepare(tokenizer, messages=CHAT, documents=["A."], documents_message=-6)
    with pytest.raises(InputError, match=r"is message 3 \(tool\); documents go into a user or system message"):
        prepare(tokenizer, messages=CHAT, documents=["A."], documents_message=3)
    with pytest.raises(InputError, match=r"-1 is message 4 \(assistant\)"):
        prepare(tokenizer, messages=CHAT, documents=["A."], documents_message=-1)  # the traced turn
    with pytest.raises(InputError, match="must be a message index"):
        prepare(tokenizer, messages=CHAT, documents=["A."], documents_message="1")
    with pytest.raises(InputError, match="give `documents=` too"):
        prepare(tokenizer, messages=CHAT, documents_message=1)
    with pytest.raises(InputError, match="a plain prompt's documents open it"):
        prepare(tokenizer, prompt="Q?", documents=["A."], documents_message=0)
    for bad in (5, 3):
        with pytest.raises(InputError) as error:
            prepare(tokenizer, messages=CHAT, documents=["A."], documents_message=bad)
        assert "\n" not in str(error.value)


def test_documents_layout() -> None:
    text, ranges = with_documents("Q?", parse_documents([{"name": "a", "text": "A."}, "B."]))
    assert text == "Document 1: a\nA.\n\nDocument 2\nB.\n\nQ?"
    docs = [chars for index, chars in ranges if index >= 0]
    assert [text[a:b] for a, b in docs] == ["A.", "B."]


def test_native_tool_calls_are_located(tokenizer) -> None:
    native = copy.copy(tokenizer)
    native.chat_template = NATIVE_TEMPLATE
    rendered = render_conversation(native, parse_messages(CHAT[:-1]), tools=TOOLS)
    assert rendered.text.startswith("<|im_start|>system\nTOOLS ")  # the template's own tools block
    call = next(s for s in rendered.segments if s.kind == "tool_call")
    assert text_of(rendered, call).startswith("get_weather") and text_of(rendered, call).endswith('"Paris"}')
    assert not [s for s in rendered.segments if s.kind == "tools"]  # no spantrace-written tool text


def test_layout_marks_template_tokens_and_places_segments(tokenizer) -> None:
    prepared = prepare(tokenizer, messages=CHAT, tools=TOOLS)
    layout = complete_layout(tokenizer, prepared, prepared.output_ids)
    tokens = [tokenizer.decode([i]) for i in prepared.ids + prepared.output_ids]
    assert len(layout.offsets) == len(tokens) == len(layout.template)
    template = {t for t, m in zip(tokens, layout.template, strict=True) if m}
    assert {"<|im_start|>", "<|im_end|>", "system", "\n", "<", "tool"} <= template
    given = "".join(t for t, m in zip(tokens, layout.template, strict=True) if not m)
    assert "You are a travel agent." in given and "Sunny, 24 C" in given and "It is sunny in Paris." in given
    assert "Tools you can call" not in given and "<tool_call>" not in given
    for segment in layout.segments:
        if segment.kind in ("message", "document", "tool_call") and segment.tokens is not None:
            a, b = segment.tokens
            covered = layout.text[layout.offsets[a][0] : layout.offsets[b - 1][1]]
            assert text_of(layout, segment).strip() in covered
    last = [s for s in layout.segments if s.kind == "message"][-1]
    assert last.name == "assistant #4" and last.tokens[0] == len(prepared.ids)  # the traced turn is the output
    assert text_of(layout, last) == "It is sunny in Paris."
    assert Layout.from_dict(json.loads(json.dumps(layout.to_dict()))) == layout


def test_prompt_offsets_come_from_the_tokenizer(tokenizer) -> None:
    prepared = prepare(tokenizer, prompt="Tom has 3 apples.", output="Seven.")
    ids, _ = encode_rendered(tokenizer, Rendered(prepared.context.text), add_special_tokens=False)
    assert prepared.ids == ids == tokenizer(prepared.context.text, add_special_tokens=False)["input_ids"]
    layout = complete_layout(tokenizer, prepared, prepared.output_ids)
    for (a, b), token_id in zip(layout.offsets, prepared.ids + prepared.output_ids, strict=True):
        assert layout.text[a:b] == tokenizer.decode([token_id])
    user, answer = layout.of_kind("message")
    assert text_of(layout, user) == "Tom has 3 apples." and text_of(layout, answer) == "Seven."


def test_a_plain_prompt_without_template(tokenizer) -> None:
    prepared = prepare(tokenizer, prompt="Q?", documents=["A."], chat=False)
    assert prepared.context.text == "Document 1\nA.\n\nQ?" and prepared.source == "text"


def test_anchor_assignment_is_one_group_per_token() -> None:
    text = "ab cd. ef"
    offsets = [(0, 2), (2, 5), (5, 6), (6, 9)]  # "ab", " cd", ".", " ef"
    assert assign(text, offsets, [(0, 6), (7, 9)]) == [0, 0, 0, 1]
    assert assign(text, [(3, 3)], [(0, 9)]) == [None]  # a token with no characters (an added BOS)
    layout = build_layout(text, offsets, [], [False] * 4, source="text")
    assert layout.template == [True] * 4  # nothing given: all of it is template
    assert layout_from_tokens(["a", "bc"], [True, False]).offsets == [(0, 1), (1, 3)]


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([{"content": "hi"}], "message 0 has no 'role'"),
        ([{"role": "bot", "content": "hi"}], "unknown role 'bot'"),
        ([{"role": "user"}], "message 0 (user) has no 'content'"),
        ([{"role": "user", "content": 3}], "must be text"),
        ([{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}], "no matching tool call"),
        ([{"role": "assistant", "content": "", "tool_calls": [CALL]}, {"role": "tool", "tool_call_id": "zz",
          "content": "x"}], "with id 'zz'"),
        ([{"role": "assistant", "content": "", "tool_calls": [{"function": {}}]}], "needs a function name"),
        ([{"role": "user", "content": "hi", "tool_calls": [CALL]}], "only assistant messages"),
        (["hi"], "message 0 is not an object"),
    ],
)
def test_bad_messages_give_one_line(messages, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)) as error:
        parse_messages(messages)
    assert "\n" not in str(error.value)


def test_bad_documents_and_conversations() -> None:
    with pytest.raises(InputError, match="document 0 is empty"):
        parse_documents(["  "])
    with pytest.raises(InputError, match="document 1 must be"):
        parse_documents(["a", {"name": "x"}])
    with pytest.raises(InputError, match='needs a "messages" list'):
        parse_conversation({"turns": []})
    messages, tools = parse_conversation({"messages": CHAT, "tools": TOOLS})
    assert len(messages) == 5 and tools == TOOLS


def test_prepare_rejects_mixed_inputs(tokenizer) -> None:
    with pytest.raises(InputError, match="not both"):
        prepare(tokenizer, prompt="x", messages=CHAT)
    with pytest.raises(InputError, match="leave out `output=`"):
        prepare(tokenizer, messages=CHAT, output="y")
    with pytest.raises(InputError, match="goes with `messages=`"):
        prepare(tokenizer, prompt="x", tools=TOOLS)
    with pytest.raises(InputError, match="chat=False is for a plain prompt"):
        prepare(tokenizer, messages=CHAT, chat=False)
    with pytest.raises(InputError, match="nothing before the assistant"):
        prepare(tokenizer, messages=[{"role": "assistant", "content": "hi"}])


def test_answer_prefix_starts_the_assistant_turn_as_scaffolding(tokenizer) -> None:
    plain = prepare(tokenizer, prompt="Where is the cat?", documents=["The cat is on the mat."])
    prepared = prepare(tokenizer, prompt="Where is the cat?", documents=["The cat is on the mat."],
                       answer_prefix=" The cat is", output=" on the mat.")
    text = prepared.context.text
    assert text == plain.context.text + " The cat is" and text.endswith("assistant\n The cat is")
    assert prepared.ids == tokenizer(text, add_special_tokens=False)["input_ids"]  # one string, tokenised once
    assert prepared.context.segments[:-1] == plain.context.segments  # the given pieces stay where they were
    prefix = prepared.context.segments[-1]
    assert (prefix.kind, prefix.name) == ("scaffold", "answer prefix") and text[slice(*prefix.chars)] == " The cat is"
    layout = complete_layout(tokenizer, prepared, prepared.output_ids)
    context = len(prepared.ids)
    prefix_tokens = [p for p in range(context) if layout.offsets[p][0] >= prefix.chars[0]]
    assert tokenizer.decode([prepared.ids[p] for p in prefix_tokens]) == " The cat is"
    assert all(layout.template[p] for p in prefix_tokens)  # nobody gave it: template, never scored as a source
    assert not any(layout.template[p] for p in range(*layout.of_kind("document")[0].tokens))
    assert text_of(layout, layout.of_kind("message")[-1]) == " on the mat."  # the output follows the prefix
    assert prepare(tokenizer, prompt="Q?", answer_prefix="A:", chat=False).context.text == "Q?A:"
    with pytest.raises(InputError, match="goes with `prompt=`"):
        prepare(tokenizer, messages=CHAT[:2], answer_prefix="A:")
    with pytest.raises(InputError, match="must be text"):
        prepare(tokenizer, prompt="Q?", answer_prefix=3)

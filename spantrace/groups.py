"""Sources: pool a trace's token scores over a grouping of the context (sentences, messages, documents, …).

FlashTrace scores add up over source positions, so the score of a group of tokens is the sum of its
tokens' scores, and the shares of disjoint groups add up too. ``TraceResult.by(grouping)`` returns a
``SourceTable``; groupings:

    token, word, sentence, line, paragraph    text pieces of the context (within each message or document)
    message                                   each message of the conversation before the traced turn
    document                                  each document given with ``documents=``
    tool_result                               each tool message
    tool_call                                 each tool call an earlier assistant turn made
    image                                     each image (its grid's tokens, no row breaks;
                                              ``TraceResult.image_map`` lays them out on the picture)
    [{"name": ..., "chars": (a, b)}, ...]     your own ranges: characters of ``result.layout.text``, or
    [{"name": ..., "tokens": (a, b)}, ...]    token positions (end exclusive)

Every token belongs to at most one group: the one holding its first non-space character. Only context
tokens (before the traced turn) are sources. Template and special tokens are left out unless
``include_template=True``; the table says how much score they held (``template_score``) and how much lay
in no group (``outside_score``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import GroupingError
from .text.layout import CharRange, Layout, assign
from .text.pieces import split_lines, split_sentences

TEXT_GROUPINGS = ("token", "word", "sentence", "line", "paragraph")
STRUCTURE_GROUPINGS = ("message", "document", "tool_result", "tool_call", "image")
GROUPINGS = TEXT_GROUPINGS + STRUCTURE_GROUPINGS
_WORD = re.compile(r"\w+(?:['’\-]\w+)*|[^\w\s]+")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")


@dataclass(frozen=True)
class Source:
    """One row of a source table. tokens: ``(first, last + 1)`` of the group's scored tokens; positions: all of
    them (a group may skip template tokens). hop_scores: the group's sum of each hop's raw scores."""

    name: str
    kind: str
    chars: CharRange | None
    tokens: tuple[int, int]
    positions: tuple[int, ...]
    score: float
    share: float
    rank: int
    hop_scores: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "name": self.name,
            "kind": self.kind,
            "char_start": self.chars[0] if self.chars else None,
            "char_end": self.chars[1] if self.chars else None,
            "token_start": self.tokens[0],
            "token_end": self.tokens[1],
            "score": self.score,
            "share": self.share,
            **{f"hop{k}": value for k, value in enumerate(self.hop_scores)},
        }


@dataclass(frozen=True)
class SourceTable(Sequence[Source]):
    """Sources ranked by pooled score, best first. total: the positive score of every token considered (the
    share's denominator); template_score: what template/special tokens held (left out unless included);
    outside_score: what considered tokens in no group held."""

    grouping: str
    rows: tuple[Source, ...]
    total: float
    template_score: float = 0.0
    outside_score: float = 0.0
    include_template: bool = False
    owners: tuple[int | None, ...] = field(default=(), repr=False)  # per context token: its row's group index

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):  # type: ignore[override]
        return self.rows[index]

    def __iter__(self) -> Iterator[Source]:
        return iter(self.rows)

    def top(self, k: int = 5) -> SourceTable:
        """The ``k`` best sources (same totals)."""
        return SourceTable(self.grouping, self.rows[: max(k, 0)], self.total, self.template_score,
                           self.outside_score, self.include_template, self.owners)

    def to_records(self) -> list[dict[str, Any]]:
        return [row.to_dict() for row in self.rows]

    def to_pandas(self) -> Any:
        """The table as a pandas DataFrame (one row per source; needs ``pip install pandas``)."""
        pandas = require_pandas()
        return pandas.DataFrame.from_records(self.to_records())

    def __str__(self) -> str:
        lines = [f"{'#':>3}  {'share':>6}  {'score':>9}  {'kind':<9}  name"]
        for row in self.rows:
            lines.append(f"{row.rank:>3}  {row.share:>6.1%}  {row.score:>9.4g}  {row.kind:<9}  {row.name}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from html import escape

        cells = "".join(
            f"<tr><td>{r.rank}</td><td>{escape(r.name)}</td><td>{escape(r.kind)}</td>"
            f"<td>{r.score:.4g}</td><td>{r.share:.1%}</td></tr>"
            for r in self.rows
        )
        return f"<table><tr><th>#</th><th>name</th><th>kind</th><th>score</th><th>share</th></tr>{cells}</table>"


def require_pandas() -> Any:
    try:
        import pandas
    except ImportError as error:
        raise ImportError("this needs pandas, which is not installed: pip install pandas") from error
    return pandas


def available_groupings(layout: Layout) -> list[str]:
    """The groupings a layout has boundaries for."""
    names = list(TEXT_GROUPINGS)
    kinds = {s.kind for s in layout.segments}
    roles = {s.role for s in layout.segments if s.kind == "message"}
    names += [g for g, present in (("message", "message" in kinds), ("document", "document" in kinds),
                                   ("tool_result", "tool" in roles), ("tool_call", "tool_call" in kinds),
                                   ("image", "image" in kinds)) if present]
    return names


def pool(
    layout: Layout,
    scores: np.ndarray,
    hop_scores: Sequence[np.ndarray],
    grouping: str | Sequence[Mapping[str, Any]],
    *,
    include_template: bool = False,
) -> SourceTable:
    """The context's scores summed over ``grouping`` (module docstring), ranked.

    scores: [P] final scores of the context (the P positions before the traced turn); hop_scores: each hop's raw
    scores ([P] or longer: only the first P count); layout: where every token sits."""
    context = len(scores)
    template = np.asarray(layout.template[:context], dtype=bool)
    considered = np.ones(context, dtype=bool) if include_template else ~template
    groups, name = _groups(layout, grouping, context)
    owners: list[int | None] = [None] * context
    for index, (_, _, _, positions) in enumerate(groups):
        for position in positions:
            if position < context and owners[position] is None:
                owners[position] = index
    scores = np.asarray(scores, dtype=np.float64)
    hops = [np.asarray(h[:context], dtype=np.float64) for h in hop_scores]
    total = float(np.clip(scores[considered], 0, None).sum())
    members: dict[int, list[int]] = {}
    for position, owner in enumerate(owners):
        if owner is not None and considered[position]:
            members.setdefault(owner, []).append(position)
    rows = []
    for index, positions in members.items():
        label, kind, chars, _ = groups[index]
        picked = np.asarray(positions)
        score = float(scores[picked].sum())
        rows.append((label, kind, chars, tuple(positions), score, tuple(float(h[picked].sum()) for h in hops)))
    rows.sort(key=lambda row: (-row[4], row[3][0]))
    table = tuple(
        Source(name=label, kind=kind, chars=chars, tokens=(positions[0], positions[-1] + 1), positions=positions,
               score=score, share=score / total if total > 0 else 0.0, rank=rank, hop_scores=hop_scores)
        for rank, (label, kind, chars, positions, score, hop_scores) in enumerate(rows, start=1)
    )
    outside = [p for p in range(context) if considered[p] and owners[p] is None]
    return SourceTable(
        grouping=name,
        rows=table,
        total=total,
        template_score=float(scores[template].sum()) if not include_template else 0.0,
        outside_score=float(scores[outside].sum()) if outside else 0.0,
        include_template=include_template,
        owners=tuple(owners),
    )


Group = tuple[str, str, CharRange | None, list[int]]  # name, kind, characters, token positions


def _groups(layout: Layout, grouping: Any, context: int) -> tuple[list[Group], str]:
    if isinstance(grouping, str):
        grouping = grouping.strip().lower()
        if grouping not in GROUPINGS:
            raise GroupingError(f"unknown grouping {grouping!r}; use one of {', '.join(GROUPINGS)} or a list of ranges")
        if grouping == "token":
            offsets = layout.offsets[:context]
            return [(repr(layout.text[a:b]), "token", (a, b), [p]) for p, (a, b) in enumerate(offsets)], grouping
        if grouping in TEXT_GROUPINGS:
            return _text_groups(layout, grouping, context), grouping
        return _structure_groups(layout, grouping, context), grouping
    return _custom_groups(layout, grouping, context), "custom"


def _regions(layout: Layout, context: int) -> list[CharRange]:
    """Where text pieces are looked for: the given pieces of the context (messages, tool definitions), else
    the whole context text."""
    limit = layout.offsets[context - 1][1] if context else 0
    given = [s.chars for s in layout.segments if s.kind in ("message", "tools", "document") and s.chars[0] < limit]
    images = _image_holes(layout)  # cut out of the text, never split into words
    if not given:
        return _without(images, [(0, limit)])
    # nested pieces (documents inside a message) are split on their own: cut the outer range around them
    regions: list[CharRange] = []
    for start, end in sorted(set(given)):
        inner = sorted(c for c in given if start <= c[0] and c[1] <= end and c != (start, end))
        cursor = start
        for a, b in inner:
            if a > cursor:
                regions.append((cursor, a))
            cursor = max(cursor, b)
        if cursor < end:
            regions.append((cursor, end))
    regions = sorted({r for r in regions if not any(r != o and o[0] <= r[0] and r[1] <= o[1] for o in regions)})
    return _without(images, regions)


def _image_holes(layout: Layout) -> set[CharRange]:
    """The characters of each image with the template tokens around it (``<|vision_start|>`` …)."""
    holes = set()
    for image in layout.of_kind("image"):
        if image.tokens is None:
            continue
        first, last = image.tokens
        while first > 0 and layout.template[first - 1]:
            first -= 1
        while last < len(layout.offsets) and layout.template[last]:
            last += 1
        holes.add((layout.offsets[first][0], layout.offsets[last - 1][1]))
    return holes


def _without(holes: set[CharRange], regions: list[CharRange]) -> list[CharRange]:
    """``regions`` with the character ranges ``holes`` cut out of them."""
    for hole_start, hole_end in sorted(holes):
        cut: list[CharRange] = []
        for start, end in regions:
            if hole_end <= start or end <= hole_start:
                cut.append((start, end))
                continue
            cut += [piece for piece in ((start, hole_start), (hole_end, end)) if piece[0] < piece[1]]
        regions = cut
    return regions


def _text_groups(layout: Layout, grouping: str, context: int) -> list[Group]:
    ranges: list[CharRange] = []
    for start, end in _regions(layout, context):
        found = _SPLITTERS[grouping](layout.text[start:end])
        ranges += [(start + a, start + b) for a, b in found]
    ranges.sort()
    owners = assign(layout.text, layout.offsets[:context], ranges)
    groups: list[Group] = [(_label(layout.text[a:b]), grouping, (a, b), []) for a, b in ranges]
    for position, owner in enumerate(owners):
        if owner is not None:
            groups[owner][3].append(position)
    return groups


def _words(text: str) -> list[CharRange]:
    return [match.span() for match in _WORD.finditer(text)]


def _paragraphs(text: str) -> list[CharRange]:
    pieces, begin = [], 0
    for match in _PARAGRAPH_BREAK.finditer(text):
        pieces.append((begin, match.start()))
        begin = match.end()
    pieces.append((begin, len(text)))
    return [(a, b) for a, b in pieces if text[a:b].strip()]


_SPLITTERS = {"word": _words, "sentence": split_sentences, "line": split_lines, "paragraph": _paragraphs}


def _label(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _structure_groups(layout: Layout, grouping: str, context: int) -> list[Group]:
    if grouping == "tool_result":
        segments = [s for s in layout.of_kind("message") if s.role == "tool"]
    else:
        segments = layout.of_kind(grouping)
    segments = [s for s in segments if s.tokens is not None and s.tokens[0] < context]
    if not segments:
        have = ", ".join(available_groupings(layout))
        raise GroupingError(
            f"this result has no {grouping.replace('_', ' ')} boundaries in its context (it was traced from "
            f"{_made_from(layout)}); use one of: {have}"
        )
    owners = assign(layout.text, layout.offsets[:context], [s.chars for s in segments])
    groups: list[Group] = [(s.name, grouping, s.chars, []) for s in segments]
    for position, owner in enumerate(owners):
        if owner is not None:
            groups[owner][3].append(position)
    if grouping == "image":  # an image is its grid's cells: row breaks between its rows belong to no image
        for group, segment in zip(groups, segments, strict=True):
            if segment.image is not None:
                cells = {segment.tokens[0] + offset for offset in segment.image.cell_offsets()}
                group[3][:] = [position for position in group[3] if position in cells]
    return groups


def _made_from(layout: Layout) -> str:
    return {"tokens": "token ids", "text": "a plain prompt"}.get(layout.source, "a prompt or conversation without them")


def _custom_groups(layout: Layout, grouping: Any, context: int) -> list[Group]:
    if isinstance(grouping, (str, bytes)) or not isinstance(grouping, Sequence) or not grouping:
        raise GroupingError(
            'a grouping is a name (token, sentence, message, …) or a list of {"name": ..., "chars": (a, b)} '
            'or {"name": ..., "tokens": (a, b)}'
        )
    groups: list[Group] = []
    for index, entry in enumerate(grouping):
        if not isinstance(entry, Mapping) or ("chars" in entry) == ("tokens" in entry):
            raise GroupingError(f'group {index} needs a "name" and either "chars": (a, b) or "tokens": (a, b)')
        key = "chars" if "chars" in entry else "tokens"
        try:
            start, end = (int(entry[key][0]), int(entry[key][1]))
        except (TypeError, ValueError, IndexError, OverflowError) as error:  # OverflowError: int(inf)
            raise GroupingError(f'group {index}: "{key}" must be two whole numbers (start, end)') from error
        limit = len(layout.text) if key == "chars" else len(layout.offsets)
        if not 0 <= start < end <= limit:
            raise GroupingError(f"group {index}: {key} ({start}, {end}) must satisfy 0 ≤ start < end ≤ {limit}")
        name = str(entry.get("name", f"group {index}"))
        if key == "tokens":
            chars = (layout.offsets[start][0], layout.offsets[end - 1][1])
            groups.append((name, "custom", chars, [p for p in range(start, min(end, context))]))
        else:
            owned = assign(layout.text, layout.offsets[:context], [(start, end)])
            groups.append((name, "custom", (start, end), [p for p, o in enumerate(owned) if o == 0]))
    return groups

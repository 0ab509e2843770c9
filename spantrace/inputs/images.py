"""Images in a conversation: the processor's tokens and pixels, and each image located as a source.

The chat template writes one image marker per picture (``<|vision_start|><|image_pad|><|vision_end|>`` for
Qwen, ``<image>`` for LLaVA, …); the processor then widens each marker into the image's run of tokens and
computes the pixels the vision tower reads (``pixel_values``, ``image_grid_thw``, …: the ``model_inputs``).
``attach_images`` takes the processor's token ids as the truth and rebuilds the text the model reads to match
them (the rendered text with every inserted token's own text spliced in), so every token keeps a character
range, every given piece moves with the text around it, and each run of image tokens becomes an ``"image"``
segment with its grid (``text.layout.ImageGrid``).

The grid: Qwen-style processors give ``image_grid_thw`` (``t × h × w`` vision patches of ``patch_size``
pixels); after the merger (``merge_size`` × ``merge_size`` patches per token) the image is ``h / merge`` rows
× ``w / merge`` columns of tokens. Processors without it (LLaVA, Gemma 3) resize every image to one square
``pixel_values`` and give a square number of tokens: ``√n × √n``, each cell ``size / √n`` pixels.
"""

from __future__ import annotations

import base64
import difflib
import io
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..errors import InputError
from ..text.layout import PREVIEW_PREFIX, CharRange, ImageGrid, Segment
from ..text.tokens import runs
from .given import Message
from .render import Rendered

PREVIEW_SIDE = 256  # pixels: the longer side of the preview kept in the layout for the views


def conversation_images(messages: Sequence[Message]) -> list[tuple[int, Any]]:
    """Every image of the conversation in reading order, with the index of the message it sits in."""
    return [(number, image) for number, message in enumerate(messages) for image in message.images]


def attach_images(
    processor: Any,
    rendered: Rendered,
    ids: list[int],
    offsets: list[CharRange],
    images: Sequence[tuple[int, Any]],
) -> tuple[Rendered, list[int], list[CharRange], dict[str, Any]]:
    """``rendered`` (tokenised as ``ids`` with ``offsets``) with its images: the processor's token ids, the text
    the model reads with each token's range in it, image segments added, and the processor's ``model_inputs``."""
    # the processor's own apply_chat_template's rule: a text the template opened with BOS gets no second one
    bos = getattr(processor.tokenizer, "bos_token", None)
    options = {"add_special_tokens": False} if bos and rendered.text.startswith(str(bos)) else {}
    try:
        encoded = processor(text=[rendered.text], images=[image for _, image in images], return_tensors="pt",
                            **options)
    except Exception as error:  # the processor's own complaint, whatever its type
        raise InputError(f"the processor could not take these images: {' '.join(str(error).split())}"[:300]) from error
    full_ids = [int(i) for i in encoded["input_ids"][0].tolist()]
    model_inputs = {key: value for key, value in encoded.items() if key not in ("input_ids", "attention_mask")}
    text, full_offsets, move = _splice(processor.tokenizer, rendered.text, ids, offsets, full_ids)
    image_token = _image_token_id(processor)
    shapes = _row_break_shapes(processor, encoded)
    if shapes is not None:  # Pixtral: each row of an image's tokens is its own run, a row break after it
        image_runs = row_blocks(runs(token == image_token for token in full_ids), shapes) or []
    else:
        merge = int(getattr(getattr(processor, "image_processor", None), "merge_size", 1) or 1)
        counts = token_counts(encoded.get("image_grid_thw"), merge, len(images), full_ids.count(image_token))
        image_runs = split_runs(runs(token == image_token for token in full_ids), counts)
    if len(image_runs) != len(images):
        raise InputError(f"the processor wrote {len(image_runs)} runs of image tokens for {len(images)} images; "
                         "give each image its own image part")
    segments = [replace(s, chars=(move(s.chars[0]), move(s.chars[1]))) for s in rendered.segments]
    pictures = []
    for k, ((start, end), (number, image)) in enumerate(zip(image_runs, images, strict=True)):
        if shapes is not None:
            grid = replace(row_break_grid(shapes[k], encoded["image_sizes"][k].tolist(), _row_break_side(processor)),
                           size=(image.width, image.height), preview=preview(image))
        else:
            grid = _grid(processor, encoded, k, end - start, image)
        chars = (full_offsets[start][0], full_offsets[end - 1][1])
        pictures.append(Segment("image", f"image {k} ({image.width}×{image.height})", chars, index=k,
                                message=number, image=grid))
        segments = [_widened(s, chars, number) for s in segments]
    ordered = sorted(segments + pictures, key=lambda s: (s.chars[0], -s.chars[1]))
    return Rendered(text, ordered), full_ids, full_offsets, model_inputs


def _splice(
    tokenizer: Any, text: str, ids: list[int], offsets: list[CharRange], full_ids: list[int]
) -> tuple[str, list[CharRange], Any]:
    """The text that ``full_ids`` read: ``text`` (read as ``ids``) with the tokens the processor inserted or
    replaced written in as their own text. Returns it, each token's range, and old → new character position."""
    pieces: list[str] = []
    full_offsets: list[CharRange] = []
    edits: list[tuple[int, int, int]] = []  # (old start, old end, shift after it)
    old, shift = 0, 0
    matcher = difflib.SequenceMatcher(None, ids, full_ids, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            full_offsets += [(a + shift, b + shift) for a, b in offsets[i1:i2]]
            continue
        start = offsets[i1][0] if i1 < len(offsets) else len(text)
        end = max(start, offsets[i2 - 1][1]) if i2 > i1 else start
        if start < old:
            raise InputError("the processor's tokens do not follow the rendered text; spantrace cannot place them")
        pieces.append(text[old:start])
        position = start + shift
        for token in full_ids[j1:j2]:
            piece = tokenizer.decode([token])
            full_offsets.append((position, position + len(piece)))
            pieces.append(piece)
            position += len(piece)
        shift = position - end
        edits.append((start, end, shift))
        old = end
    pieces.append(text[old:])

    def move(position: int) -> int:
        """Where character ``position`` of the rendered text sits in the spliced text (a position inside a
        replaced stretch goes to the stretch's start; inserted tokens come before the character they precede)."""
        before = 0
        for start, end, after in edits:
            if position < end:
                return start + before if position > start else position + before
            before = after
        return position + before

    return "".join(pieces), full_offsets, move


def token_counts(grid_thw: Any, merge: int, images: int, total: int) -> list[int] | None:
    """How many tokens each image takes: ``t·h·w / merge²`` from ``image_grid_thw`` (Qwen); else every image the
    same count, ``total`` image tokens over ``images`` (one square picture each: LLaVA, Gemma 3); None when that
    does not divide."""
    if grid_thw is not None:
        return [int(grid.prod()) // merge**2 for grid in grid_thw]
    return [total // images] * images if images and total % images == 0 else None


def split_runs(image_runs: list[tuple[int, int]], counts: list[int] | None) -> list[tuple[int, int]]:
    """``image_runs`` with a run that holds several images back to back (a template that writes their markers
    with nothing between them) cut into one run per image by ``counts``; as given when the counts do not tile
    the runs exactly."""
    if counts is None or len(image_runs) == len(counts):
        return image_runs
    split, remaining = [], list(counts)
    for start, end in image_runs:
        while remaining and start + remaining[0] <= end:
            split.append((start, start + remaining[0]))
            start += remaining.pop(0)
        if start != end:
            return image_runs
    return split if not remaining else image_runs


def row_blocks(image_runs: list[tuple[int, int]], shapes: Sequence[tuple[int, int]]) -> list[tuple[int, int]] | None:
    """Each image's token range ``(start, end)`` when every row of its ``cols`` cells is its own run of the image
    token with one row-break token between rows (Pixtral), from each image's ``(rows, cols)``: its first cell to
    its last, the breaks between included. None when the runs are not laid out so."""
    blocks, queue = [], list(image_runs)
    for rows, cols in shapes:
        taken, queue = queue[:rows], queue[rows:]
        if len(taken) < rows or any(end - start != cols for start, end in taken) or any(
                after[0] != before[1] + 1 for before, after in zip(taken, taken[1:], strict=False)):
            return None
        blocks.append((taken[0][0], taken[-1][1]))
    return blocks if not queue else None


def row_break_grid(shape: tuple[int, int], pixel_size: Sequence[int], side: int) -> ImageGrid:
    """The grid of an image written in rows with a break token after each (Pixtral): ``shape`` ``(rows, cols)``
    cells of ``side`` pixels over a picture of ``pixel_size`` ``(height, width)``, rows ``cols + 1`` tokens apart."""
    rows, cols = shape
    height, width = (int(v) for v in pixel_size)
    return ImageGrid(rows=rows, cols=cols, size=(width, height), input_size=(width, height), cell=(side, side),
                     row_stride=cols + 1)


def _row_break_side(processor: Any) -> int:
    """Pixels per image token along a side for a processor that writes row breaks: patch size × merge size."""
    return int(processor.patch_size) * int(getattr(processor, "spatial_merge_size", 1) or 1)


def _row_break_shapes(processor: Any, encoded: Any) -> list[tuple[int, int]] | None:
    """Each image's ``(rows, cols)`` of tokens for a processor that ends each row with a break token (Pixtral:
    ``image_break_token_id``, the images' ``image_sizes``); None for any other processor."""
    if getattr(processor, "image_break_token_id", None) is None or "image_sizes" not in encoded:
        return None
    side = _row_break_side(processor)
    return [(int(h) // side, int(w) // side) for h, w in encoded["image_sizes"].tolist()]


def _image_token_id(processor: Any) -> int:
    """The token the processor repeats for each image feature. ``image_token_ids`` names it where it is not the
    marker the template writes (Gemma 3: ``image_token_id`` is ``<start_of_image>``, the features are
    ``<image_soft_token>``); a list of several (row breaks, …) leaves it to ``image_token_id``."""
    named = getattr(processor, "image_token_ids", None)
    if isinstance(named, (list, tuple)) and len(named) == 1 and isinstance(named[0], int):
        return int(named[0])
    token_id = getattr(processor, "image_token_id", None)
    if token_id is None and getattr(processor, "image_token", None) is not None:
        token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    if token_id is None:
        raise InputError("this processor names no image token, so spantrace cannot find the images' tokens")
    return int(token_id)


def _grid(processor: Any, encoded: Any, k: int, count: int, image: Any) -> ImageGrid:
    """Image ``k``'s grid of ``count`` tokens (module docstring), its sizes and its preview."""
    image_processor = getattr(processor, "image_processor", None)
    thw = encoded["image_grid_thw"][k].tolist() if "image_grid_thw" in encoded else None
    rows, cols, input_size, cell = grid_geometry(
        k, count, thw, tuple(encoded["pixel_values"].shape[-2:]),
        patch=int(getattr(image_processor, "patch_size", 14) or 14),
        merge=int(getattr(image_processor, "merge_size", 1) or 1),
    )
    seen = _center_crop(image, input_size) if getattr(image_processor, "do_center_crop", False) else image
    return ImageGrid(rows=rows, cols=cols, size=(image.width, image.height), input_size=input_size, cell=cell,
                     preview=preview(seen))


def grid_geometry(
    k: int, count: int, thw: Sequence[int] | None, pixel_size: Sequence[int], *, patch: int, merge: int
) -> tuple[int, int, tuple[int, int], tuple[int, int]]:
    """Image ``k``'s ``(rows, cols, input_size, cell)`` for its ``count`` tokens: from its ``t × h × w`` patch grid
    when the inputs give one (``thw``), else a square of ``√count × √count`` over a picture of ``pixel_size``
    ``(height, width)`` (module docstring). InputError when the tokens form no such grid, or for a video."""
    if thw is not None:
        frames, height, width = (int(v) for v in thw)
        if frames != 1:
            raise InputError(f"image {k} has {frames} frames; videos are not supported, give still images")
        rows, cols = height // merge, width // merge
        input_size, cell = (width * patch, height * patch), (patch * merge, patch * merge)
    else:
        side = max(math.isqrt(count), 1)
        pixel_height, pixel_width = (int(v) for v in pixel_size)
        rows, cols = side, side
        input_size, cell = (pixel_width, pixel_height), (max(pixel_width // side, 1), max(pixel_height // side, 1))
    if rows * cols != count:
        raise InputError(f"image {k}'s {count} tokens do not form a grid spantrace knows (got {rows} × {cols}); "
                         "this processor's image layout is not supported")
    return rows, cols, input_size, cell


def raw_image_segments(
    token_ids: Sequence[int], model_inputs: dict[str, Any], image_token: int, *, patch: int, merge: int
) -> list[tuple[int, int, ImageGrid]]:
    """Each image of a run given raw ``model_inputs`` (no processor): its token range and grid, found as the
    processor path finds them but with no picture to show (the sizes are the pixels the tower read). Empty when
    the image tokens cannot be told apart image by image or form no grid: the run is traced the same, only
    ``by("image")`` has no rows."""
    grid_thw, pixels = model_inputs.get("image_grid_thw"), model_inputs.get("pixel_values")
    images = len(grid_thw) if grid_thw is not None else int(pixels.shape[0]) if getattr(pixels, "ndim", 0) == 4 else 0
    ids = list(token_ids)
    blocks = split_runs(runs(token == image_token for token in ids),
                        token_counts(grid_thw, merge, images, ids.count(image_token)))
    if not images or len(blocks) != images:
        return []
    found = []
    for k, (start, end) in enumerate(blocks):
        thw = grid_thw[k].tolist() if grid_thw is not None else None
        try:
            rows, cols, input_size, cell = grid_geometry(k, end - start, thw, tuple(pixels.shape[-2:]), patch=patch,
                                                         merge=merge)
        except InputError:
            return []
        found.append((start, end, ImageGrid(rows=rows, cols=cols, size=input_size, input_size=input_size, cell=cell)))
    return found


def _center_crop(image: Any, input_size: tuple[int, int]) -> Any:
    """The part of ``image`` a resize-then-center-crop processor keeps: the largest centred box with the
    crop's aspect ratio."""
    aspect = input_size[0] / input_size[1]
    width, height = (image.width, round(image.width / aspect)) if image.width / image.height <= aspect else (
        round(image.height * aspect), image.height)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def preview(image: Any, side: int = PREVIEW_SIDE) -> str:
    """A small PNG of ``image`` (longer side at most ``side`` pixels) as a ``data:`` URI."""
    small = image.copy()
    small.thumbnail((side, side))
    buffer = io.BytesIO()
    small.save(buffer, format="PNG", optimize=True)
    return PREVIEW_PREFIX + base64.b64encode(buffer.getvalue()).decode("ascii")


def _widened(segment: Segment, chars: CharRange, number: int) -> Segment:
    """Message ``number``'s segment grown to hold its image at ``chars`` (the image is part of the message)."""
    if segment.kind != "message" or segment.message != number:
        return segment
    return replace(segment, chars=(min(segment.chars[0], chars[0]), max(segment.chars[1], chars[1])))

"""An image's scores on the picture: each image token's cell, coloured by its final score, for the HTML report,
the viewer and the terminal.

Image ``k``'s tokens cover its picture row-major (``TraceResult.image_map``; row breaks between the rows, as
Pixtral writes them, are no cells: ``ImageGrid.cell_offsets``); every cell gets the colour of its
score on the heat ramp, scaled by the largest image-token score of the result, so images compare with each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..text.layout import Segment
from .heat import heat_rgb, intensities
from .view import TracedScores

DISPLAY_SIDE = 320  # CSS pixels: the longer side of an image as the report draws it


@dataclass(frozen=True)
class CellView:
    """One image token: its place on the grid, its final score, its intensity in [0, 1] and overlay colour."""

    row: int
    col: int
    position: int
    score: float
    intensity: float
    background: str  # CSS colour with some transparency, "" for none


@dataclass(frozen=True)
class ImageView:
    """One image as drawn: its preview, its display size, its grid of cells and its totals."""

    index: int
    name: str
    rows: int
    cols: int
    preview: str | None
    width: int
    height: int
    score: float
    share: float
    cells: list[CellView]


def image_views(result: TracedScores, *, display_side: int = DISPLAY_SIDE) -> list[ImageView]:
    """Every image of ``result``'s context, with each of its tokens' cell (empty without images)."""
    images = [s for s in result.layout.of_kind("image") if s.tokens is not None and s.image is not None]
    if not images:
        return []
    table = {row.tokens: row for row in result.by("image")} if any(
        s.tokens[0] < result.prompt_length for s in images) else {}
    positions = np.concatenate([[s.tokens[0] + offset for offset in s.image.cell_offsets()] for s in images])
    heat = intensities(np.asarray(result.scores, dtype=np.float64)[positions])
    heat_of = dict(zip(positions.tolist(), heat.tolist(), strict=True))
    return [_view(number, segment, result, heat_of, table, display_side) for number, segment in enumerate(images)]


def _view(number: int, segment: Segment, result: TracedScores, heat_of: dict[int, float], table: dict,
          display_side: int) -> ImageView:
    grid = segment.image
    start, _ = segment.tokens
    width, height = grid.input_size  # drawn as the vision tower sees it (resized, maybe cropped)
    scale = display_side / max(width, height)
    cells = []
    for number_in_grid, offset in enumerate(grid.cell_offsets()):  # row breaks between the rows are no cells
        position = start + offset
        intensity = heat_of[position]
        rgb = heat_rgb(intensity)
        alpha = 0.2 + 0.6 * intensity  # the picture stays visible under the weakest and the strongest cells
        background = f"rgba({rgb[0]}, {rgb[1]}, {rgb[2]}, {alpha:.2f})" if rgb is not None else ""
        row, col = divmod(number_in_grid, grid.cols)
        cells.append(CellView(row, col, position, float(result.scores[position]), intensity, background))
    pooled = table.get(segment.tokens)
    return ImageView(
        index=number,
        name=segment.name,
        rows=grid.rows,
        cols=grid.cols,
        preview=grid.preview,
        width=max(round(width * scale), 1),
        height=max(round(height * scale), 1),
        score=pooled.score if pooled is not None else 0.0,
        share=pooled.share if pooled is not None else 0.0,
        cells=cells,
    )

"""A contact sheet of one output image's chain: base → masks → person passes → later passes → final.

Each section is a row with a title; each tile is the image fitted (aspect kept, centred) into a square
cell with its label underneath. Pure PIL, so the CLI can build it from downloaded files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (24, 24, 28)
CELL_BACKGROUND = (44, 44, 50)
TEXT = (235, 235, 235)
TITLE = (150, 190, 255)

_PERSON_PASS = re.compile(r"^person-(\d+)$")


@dataclass(frozen=True)
class Tile:
    label: str
    image: Image.Image


@dataclass(frozen=True)
class Section:
    title: str
    tiles: Sequence[Tile]


@dataclass(frozen=True)
class SheetLayout:
    """Geometry of a sheet: cell size (``tile_size`` wide, ``tile_height`` high, square by default),
    margins and text heights, in pixels."""

    tile_size: int = 192
    padding: int = 12
    title_height: int = 22
    label_height: int = 20
    font_size: int = 13
    tile_height: int | None = None

    @classmethod
    def for_images(cls, images: Sequence[Image.Image], long_side: int = 192) -> SheetLayout:
        """Cells shaped like the first image (a landscape chain gets landscape cells)."""
        if not images:
            return cls(tile_size=long_side)
        width, height = images[0].size
        if width >= height:
            return cls(tile_size=long_side, tile_height=max(32, round(long_side * height / width)))
        return cls(tile_size=max(96, round(long_side * width / height)), tile_height=long_side)

    @property
    def cell_height(self) -> int:
        return self.tile_height or self.tile_size

    def size(self, sections: Sequence[Section]) -> tuple[int, int]:
        rows = [s for s in sections if s.tiles]
        columns = max((len(s.tiles) for s in rows), default=0)
        width = self.padding + max(1, columns) * (self.tile_size + self.padding)
        height = self.padding + len(rows) * self.row_height
        return width, height

    @property
    def row_height(self) -> int:
        return self.title_height + self.cell_height + self.label_height + self.padding

    def cell_origin(self, row: int, column: int) -> tuple[int, int]:
        """Top-left corner of the image cell at ``row``, ``column`` (rows count non-empty sections)."""
        x = self.padding + column * (self.tile_size + self.padding)
        y = self.padding + row * self.row_height + self.title_height
        return x, y


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` scaled (up or down) to fit a ``width`` x ``height`` cell, aspect kept, in RGB."""
    rgb = image.convert("RGB")
    scale = min(width / rgb.width, height / rgb.height)
    target = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    return rgb.resize(target, resample)


def _ellipsize(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def render_contact_sheet(sections: Sequence[Section], layout: SheetLayout | None = None) -> Image.Image:
    """One RGB image: a titled row per non-empty section, labelled tiles left to right."""
    layout = layout or SheetLayout.for_images([tile.image for section in sections for tile in section.tiles])
    sheet = Image.new("RGB", layout.size(sections), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font(layout.font_size)
    rows = [s for s in sections if s.tiles]
    for row, section in enumerate(rows):
        x0, y0 = layout.cell_origin(row, 0)
        draw.text((x0, y0 - layout.title_height + 3), section.title, fill=TITLE, font=font)
        for column, tile in enumerate(section.tiles):
            x, y = layout.cell_origin(row, column)
            width, height = layout.tile_size, layout.cell_height
            draw.rectangle((x, y, x + width - 1, y + height - 1), fill=CELL_BACKGROUND)
            fitted = _fit(tile.image, width, height)
            sheet.paste(fitted, (x + (width - fitted.width) // 2, y + (height - fitted.height) // 2))
            label = _ellipsize(draw, tile.label, font, width)
            draw.text((x, y + height + 3), label, fill=TEXT, font=font)
    return sheet


def pass_sections(
    passes: Sequence[tuple[str, Image.Image]],
    masks: Mapping[str, Image.Image],
    final: Image.Image | None,
) -> list[Section]:
    """Sections in reading order from a chain's pass outputs (in chain order), its masks and the final.

    ``base`` (and any pass before the persons) → masks (persons by index first) → ``person-<i>`` passes
    → later passes (``hires``, ``faces``, ``upscale``, ``finish``, ...) → final.
    """
    early: list[Tile] = []
    persons: list[Tile] = []
    later: list[Tile] = []
    for name, image in passes:
        if _PERSON_PASS.match(name):
            persons.append(Tile(name, image))
        elif persons:
            later.append(Tile(name, image))
        else:
            early.append(Tile(name, image))

    def mask_order(name: str) -> tuple[int, int, str]:
        match = _PERSON_PASS.match(name)
        return (0, int(match.group(1)), name) if match else (1, 0, name)

    mask_tiles = [Tile(f"mask {name}", masks[name]) for name in sorted(masks, key=mask_order)]
    sections = [
        Section("base", early),
        Section("masks", mask_tiles),
        Section("person passes", persons),
        Section("later passes", later),
        Section("final", [Tile("final", final)] if final is not None else []),
    ]
    return [s for s in sections if s.tiles]

"""Contact sheet layout, labels and sizes, from synthetic solid-colour images."""

from __future__ import annotations

import numpy as np
from PIL import Image

from multipass_client.contact_sheet import (
    BACKGROUND,
    CELL_BACKGROUND,
    Section,
    SheetLayout,
    Tile,
    pass_sections,
    render_contact_sheet,
)

RED, GREEN, BLUE, YELLOW, CYAN = (220, 30, 30), (30, 200, 60), (40, 60, 230), (240, 220, 20), (20, 210, 220)


def solid(colour, size=(64, 64), mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def pixel(sheet: Image.Image, x: int, y: int) -> tuple[int, int, int]:
    return sheet.getpixel((x, y))


def cell_centre(layout: SheetLayout, row: int, column: int) -> tuple[int, int]:
    x, y = layout.cell_origin(row, column)
    return x + layout.tile_size // 2, y + layout.tile_size // 2


def text_pixels(sheet: Image.Image, box: tuple[int, int, int, int]) -> int:
    """Pixels in ``box`` that differ from the sheet background (drawn text)."""
    region = np.asarray(sheet.crop(box)).astype(int)
    return int((np.abs(region - np.array(BACKGROUND)).sum(axis=2) > 60).sum())


def test_sheet_size_follows_rows_and_the_widest_row():
    layout = SheetLayout(tile_size=100, padding=10, title_height=20, label_height=16)
    sections = [
        Section("base", [Tile("base", solid(RED))]),
        Section(
            "masks", [Tile("a", solid(0, mode="L")), Tile("b", solid(255, mode="L")), Tile("c", solid(RED))]
        ),
        Section("empty", []),
    ]
    sheet = render_contact_sheet(sections, layout)
    assert sheet.mode == "RGB"
    # Two non-empty rows; three columns in the widest.
    assert sheet.size == (10 + 3 * 110, 10 + 2 * (20 + 100 + 16 + 10))


def test_tiles_sit_in_reading_order_and_rows_follow_sections():
    layout = SheetLayout(tile_size=80)
    sections = [
        Section("base", [Tile("base", solid(RED))]),
        Section("person passes", [Tile("person-0", solid(GREEN)), Tile("person-1", solid(BLUE))]),
        Section("final", [Tile("final", solid(YELLOW))]),
    ]
    sheet = render_contact_sheet(sections, layout)
    assert pixel(sheet, *cell_centre(layout, 0, 0)) == RED
    assert pixel(sheet, *cell_centre(layout, 1, 0)) == GREEN
    assert pixel(sheet, *cell_centre(layout, 1, 1)) == BLUE
    assert pixel(sheet, *cell_centre(layout, 2, 0)) == YELLOW
    # Unused cells stay sheet background.
    assert pixel(sheet, *cell_centre(layout, 0, 1)) == BACKGROUND


def test_images_are_fitted_with_their_aspect_ratio_and_letterboxed():
    layout = SheetLayout(tile_size=100)
    wide = solid(CYAN, size=(400, 100))  # scaled to 100x25, centred vertically
    sheet = render_contact_sheet([Section("base", [Tile("wide", wide)])], layout)
    x, y = layout.cell_origin(0, 0)
    assert pixel(sheet, x + 50, y + 50) == CYAN
    assert pixel(sheet, x + 1, y + 50) == CYAN  # full width
    assert pixel(sheet, x + 50, y + 5) == CELL_BACKGROUND  # letterbox above
    assert pixel(sheet, x + 50, y + 95) == CELL_BACKGROUND  # and below
    column = np.asarray(sheet)[y : y + 100, x + 50]
    assert int((column == np.array(CYAN)).all(axis=1).sum()) == 25


def test_small_masks_are_scaled_up_and_greyscale_becomes_rgb():
    layout = SheetLayout(tile_size=120)
    mask = Image.new("L", (12, 12), 0)
    mask.paste(255, (0, 0, 6, 12))  # left half white
    sheet = render_contact_sheet([Section("masks", [Tile("mask person-0", mask)])], layout)
    x, y = layout.cell_origin(0, 0)
    assert pixel(sheet, x + 10, y + 60) == (255, 255, 255)
    assert pixel(sheet, x + 110, y + 60) == (0, 0, 0)


def test_labels_and_titles_are_drawn_where_the_layout_says():
    layout = SheetLayout(tile_size=96)
    sections = [Section("person passes", [Tile("person-0", solid(GREEN)), Tile("", solid(GREEN))])]
    sheet = render_contact_sheet(sections, layout)
    x0, y0 = layout.cell_origin(0, 0)
    x1, _ = layout.cell_origin(0, 1)

    def label_band(x: int) -> tuple[int, int, int, int]:
        return x, y0 + layout.tile_size, x + layout.tile_size, y0 + layout.tile_size + layout.label_height

    assert text_pixels(sheet, label_band(x0)) > 20  # "person-0" under the first tile
    assert text_pixels(sheet, label_band(x1)) == 0  # the unlabelled tile has none
    title_band = (x0, y0 - layout.title_height, x0 + layout.tile_size, y0)
    assert text_pixels(sheet, title_band) > 20


def test_long_labels_are_cut_to_the_tile_width():
    layout = SheetLayout(tile_size=64)
    long_label = "person-0 with a very long descriptive label that cannot fit"
    sheet = render_contact_sheet(
        [Section("s", [Tile(long_label, solid(RED)), Tile("next", solid(BLUE))])], layout
    )
    x0, y0 = layout.cell_origin(0, 0)
    x1, _ = layout.cell_origin(0, 1)
    # Nothing of the first label spills into the gap before the second column.
    gap = (x0 + layout.tile_size, y0 + layout.tile_size, x1, y0 + layout.tile_size + layout.label_height)
    assert text_pixels(sheet, gap) == 0


def test_pass_sections_order_base_masks_persons_later_final():
    passes = [
        ("base", solid(RED)),
        ("person-1", solid(BLUE)),
        ("person-0", solid(GREEN)),
        ("hires", solid(CYAN)),
        ("finish", solid(CYAN)),
    ]
    masks = {"prompt": solid(128, mode="L"), "person-1": solid(255, mode="L"), "person-0": solid(0, mode="L")}
    sections = pass_sections(passes, masks, solid(YELLOW))
    assert [s.title for s in sections] == ["base", "masks", "person passes", "later passes", "final"]
    assert [t.label for t in sections[1].tiles] == ["mask person-0", "mask person-1", "mask prompt"]
    # Person passes keep chain order (the order they were painted in).
    assert [t.label for t in sections[2].tiles] == ["person-1", "person-0"]
    assert [t.label for t in sections[3].tiles] == ["hires", "finish"]
    assert [t.label for t in sections[4].tiles] == ["final"]


def test_pass_sections_leave_out_what_is_missing():
    sections = pass_sections([("base", solid(RED))], {}, None)
    assert [s.title for s in sections] == ["base"]
    sheet = render_contact_sheet(sections, SheetLayout(tile_size=50, padding=5))
    assert sheet.size == (5 + 55, 5 + SheetLayout(tile_size=50, padding=5).row_height)


def test_cells_take_the_shape_of_the_chain_images():
    landscape = [
        Section("base", [Tile("base", solid(RED, size=(300, 200)))]),
        Section("final", [Tile("final", solid(BLUE, size=(300, 200)))]),
    ]
    sheet = render_contact_sheet(landscape)
    layout = SheetLayout(tile_size=192, tile_height=128)
    assert SheetLayout.for_images([solid(RED, size=(300, 200))]) == layout
    assert sheet.size == layout.size(landscape)
    x, y = layout.cell_origin(1, 0)
    # The image fills its cell: no letterbox at the corners.
    assert pixel(sheet, x + 1, y + 1) == BLUE and pixel(sheet, x + 190, y + 126) == BLUE
    portrait = SheetLayout.for_images([solid(RED, size=(200, 300))])
    assert (portrait.tile_size, portrait.cell_height) == (128, 192)

"""Sizes, masks, canvases and reference sheets for image inputs (torch-free units)."""

from __future__ import annotations

import pytest
from PIL import Image

from fluxserve.errors import InvalidRequest
from fluxserve.images import ops as imageops
from fluxserve.images.sizing import fit_size, parse_aspect_ratio, size_for_aspect
from fluxserve.jobs import imageprep
from fluxserve.specs import MODEL_SPECS

KONTEXT = MODEL_SPECS["flux-kontext-dev"]
FILL = MODEL_SPECS["flux-fill-dev"]


@pytest.mark.parametrize("text", ["21:9", "16:9", "1:1", "9:16", "9:21", "4:3"])
def test_aspect_ratios_between_21_9_and_9_21_are_taken(text):
    width, height = (int(part) for part in text.split(":"))
    assert parse_aspect_ratio(text, "aspect_ratio") == pytest.approx(width / height)


@pytest.mark.parametrize("text", ["3:1", "1:3", "22:9", "abc", "16/9", "0:1", "1:0", "", "-1:2"])
def test_other_aspect_ratios_are_refused_naming_the_field(text):
    with pytest.raises(InvalidRequest) as caught:
        parse_aspect_ratio(text, "aspect_ratio")
    assert caught.value.field == "aspect_ratio"


@pytest.mark.parametrize("text", ["1:1", "16:9", "21:9", "9:21", "3:2", "4:5"])
def test_kontext_sizes_are_about_one_megapixel_on_the_grid(text):
    ratio = parse_aspect_ratio(text, "aspect_ratio")
    width, height = size_for_aspect(ratio, 1024 * 1024)
    assert width % 16 == 0
    assert height % 16 == 0
    assert abs(width * height - 1024 * 1024) / (1024 * 1024) < 0.05
    assert width / height == pytest.approx(ratio, rel=0.05)
    assert size_for_aspect(1.0, 1024 * 1024) == (1024, 1024)


def test_fit_size_keeps_small_sizes_and_scales_large_ones_down():
    assert fit_size(100, 70, 1440 * 1440) == (96, 64)  # down to the grid
    width, height = fit_size(6000, 4000, 1440 * 1440)
    assert width * height <= 1440 * 1440
    assert width % 16 == 0
    assert height % 16 == 0
    assert width / height == pytest.approx(1.5, rel=0.02)


def test_edit_size_follows_the_first_reference_unless_a_ratio_is_given():
    wide = Image.new("RGB", (300, 100))
    assert imageprep.edit_size(KONTEXT, None, [wide]) == size_for_aspect(21 / 9, 1024 * 1024)
    assert imageprep.edit_size(KONTEXT, None, []) == (1024, 1024)
    assert imageprep.edit_size(KONTEXT, "1:1", [wide]) == (1024, 1024)


def test_fill_takes_the_mask_from_transparency_when_none_is_given():
    image = Image.new("RGBA", (64, 64), (10, 20, 30, 255))
    image.paste((0, 0, 0, 0), (0, 0, 32, 64))  # left half transparent
    prepared = imageprep.prepare_fill(FILL, image, None)
    assert (prepared.width, prepared.height) == (64, 64)
    assert prepared.mask.getpixel((5, 5)) == 255  # repaint
    assert prepared.mask.getpixel((50, 5)) == 0  # keep
    assert prepared.images[0].mode == "RGB"


def test_fill_needs_a_mask_or_transparency_and_matching_sizes():
    opaque = Image.new("RGB", (64, 64))
    with pytest.raises(InvalidRequest, match="mask is required") as caught:
        imageprep.prepare_fill(FILL, opaque, None)
    assert caught.value.field == "mask"
    with pytest.raises(InvalidRequest, match="must match") as caught:
        imageprep.prepare_fill(FILL, opaque, Image.new("L", (64, 80)))
    assert caught.value.field == "mask"


def test_a_grey_mask_becomes_black_and_white():
    mask = Image.new("L", (64, 64), 200)
    prepared = imageprep.prepare_fill(FILL, Image.new("RGB", (64, 64)), mask)
    assert set(prepared.mask.getdata()) == {255}


def test_expand_grows_the_canvas_and_masks_only_the_border():
    image = Image.new("RGB", (64, 64), (200, 0, 0))
    prepared = imageprep.prepare_expand(FILL, image, top=16, bottom=0, left=32, right=32)
    assert (prepared.width, prepared.height) == (128, 80)
    canvas, mask = prepared.images[0], prepared.mask
    assert canvas.getpixel((40, 30)) == (200, 0, 0)  # the original, moved by (32, 16)
    assert mask.getpixel((40, 30)) == 0
    assert mask.getpixel((5, 5)) == 255
    assert mask.getpixel((100, 8)) == 255
    with pytest.raises(InvalidRequest):
        imageprep.prepare_expand(FILL, image, 0, 0, 0, 0)


def test_expand_past_the_largest_size_is_scaled_down_on_the_grid():
    prepared = imageprep.prepare_expand(FILL, Image.new("RGB", (1024, 1024)), 0, 0, 2048, 2048)
    assert prepared.width * prepared.height <= FILL.max_area
    assert prepared.width % 16 == 0
    assert prepared.height % 16 == 0
    assert prepared.mask.size == prepared.images[0].size == (prepared.width, prepared.height)


def test_image_to_image_crops_to_the_output_shape():
    prepared = imageprep.prepare_image_to_image(Image.new("RGB", (200, 100)), 64, 64)
    assert prepared.images[0].size == (64, 64)


def test_strength_must_leave_at_least_one_step():
    imageprep.check_strength(0.25, 4)
    with pytest.raises(InvalidRequest) as caught:
        imageprep.check_strength(0.2, 4)
    assert caught.value.field == "strength"


def test_reference_sheet_places_images_side_by_side_at_one_height():
    red = Image.new("RGB", (64, 64), (255, 0, 0))
    blue = Image.new("RGB", (64, 32), (0, 0, 255))
    sheet = imageops.reference_sheet([red, blue])
    assert sheet.size == (64 + 128, 64)
    assert sheet.getpixel((10, 10)) == (255, 0, 0)
    assert sheet.getpixel((100, 10)) == (0, 0, 255)
    assert imageops.reference_sheet([red]).size == (64, 64)


def test_large_references_are_scaled_down_before_they_are_stored():
    prepared = imageprep.prepare_edit(KONTEXT, [Image.new("RGB", (4000, 3000))], 1024, 1024)
    (stored,) = prepared.images
    assert stored.width * stored.height <= KONTEXT.max_area

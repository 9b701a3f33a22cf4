"""The overlay: per-instance colours, tinted and outlined masks, tags that avoid each other."""

import numpy as np
import pytest
from PIL import Image

from segmentation.inference import Detection, render_overlay
from segmentation.inference.overlay import (
    ALPHA,
    contrast_ratio,
    hsl_to_rgb,
    ink_for,
    palette,
)


def square(label, x0, y0, size, image_size, score=0.9):
    return Detection.from_region(
        label=label,
        score=score,
        box=(x0, y0, x0 + size, y0 + size),
        mask=np.ones((size, size), dtype=bool),
        origin=(x0, y0),
        image_size=image_size,
    )


@pytest.mark.slow
def test_a_red_photo_stays_red_where_there_is_no_mask(yolo, photos):
    array = np.asarray(photos["astronaut"]).copy()
    array[..., 1] //= 5  # strongly red: little green and blue left
    array[..., 2] //= 5
    red = Image.fromarray(array)
    detections = yolo.predict(red, score_threshold=0.3)
    assert detections, "the model should still see the astronaut"

    overlay = np.asarray(render_overlay(red, detections))

    covered = np.zeros(array.shape[:2], dtype=bool)
    for det in detections:
        x1, y1, x2, y2 = (int(v) for v in det.box)
        covered[max(y1 - 60, 0) : y2 + 10, max(x1 - 10, 0) : x2 + 10] = True  # box, tag, mask
    untouched = ~covered
    assert untouched.sum() > 1000
    assert np.array_equal(overlay[untouched], array[untouched])


def test_masked_pixels_are_blended_with_their_instance_colour():
    image = Image.new("RGB", (200, 200), (100, 30, 200))
    det = square("cat", 50, 60, 80, (200, 200))
    out = np.asarray(render_overlay(image, [det])).astype(int)
    colour = np.array(palette(["cat"]).instances[0])
    expected = np.floor(np.array([100, 30, 200]) * (1 - ALPHA) + colour * ALPHA + 0.5)
    assert np.abs(out[120, 90] - expected).max() <= 1  # inside the mask, away from tag and edge
    assert tuple(out[195, 5]) == (100, 30, 200)  # outside every mask and tag


def test_instances_of_one_class_get_distinct_colours_and_classes_distinct_families():
    labels = ["horse"] * 5 + ["person"] * 3
    colours = palette(labels)
    assert len(set(colours.instances)) == 8
    assert colours.classes["horse"] != colours.classes["person"]
    assert colours.instances[0] == colours.classes["horse"]  # the first is the class colour


def test_colours_do_not_change_when_the_threshold_removes_later_detections():
    labels = ["dog", "person", "dog", "car", "person", "dog"]
    full = palette(labels).instances
    for n in range(len(labels)):
        assert palette(labels[:n]).instances == full[:n]


def test_hsl_conversion_matches_known_colours():
    assert hsl_to_rgb(0, 1, 0.5) == (255, 0, 0)
    assert hsl_to_rgb(120, 1, 0.5) == (0, 255, 0)
    assert hsl_to_rgb(240, 1, 0.25) == (0, 0, 128)
    assert hsl_to_rgb(0, 0, 1) == (255, 255, 255)


def test_tag_text_always_has_at_least_4_5_to_1_contrast():
    for hue in range(0, 360, 5):
        for lightness in (0.3, 0.4, 0.52, 0.64, 0.8):
            colour = hsl_to_rgb(hue, 0.8, lightness)
            assert contrast_ratio(colour, ink_for(colour)) >= 4.5, colour


def tag_pixels(out, colour):
    return np.argwhere(np.abs(out.astype(int) - colour).sum(axis=2) == 0)


def test_tags_are_sized_for_the_photo():
    for size in [(64, 48), (640, 480), (4000, 3000)]:
        image = Image.new("RGB", size, (0, 0, 0))
        s = min(size) // 2
        det = square("dog", size[0] // 4, size[1] // 3, s, size)
        out = np.asarray(render_overlay(image, [det]))
        tag = tag_pixels(out, palette(["dog"]).instances[0])
        assert len(tag) > 0, size
        tag_height = tag[:, 0].max() - tag[:, 0].min() + 1
        assert tag_height >= 0.02 * max(size), size  # legible when a 12 MP photo is shrunk


def test_tags_stay_inside_the_image_for_boxes_at_its_edges():
    image = Image.new("RGB", (300, 200), (255, 255, 255))
    corners = [square("dog", 250, 0, 50, (300, 200)), square("cat", 0, 150, 50, (300, 200))]
    out = np.asarray(render_overlay(image, corners))
    for colour in palette(["dog", "cat"]).instances:
        tag = tag_pixels(out, colour)
        assert len(tag) > 0
        assert tag[:, 0].min() >= 0 and tag[:, 1].max() < 300


def test_tags_of_crowded_instances_do_not_overlap():
    from segmentation.inference.overlay import _free_spot, _overlaps

    placed = []
    for i in range(12):  # twelve boxes on top of each other
        spot = _free_spot((100 + i, 100, 180 + i, 200), 60, 16, (400, 300), placed)
        if spot:
            assert not any(_overlaps(spot, other) for other in placed)
            placed.append(spot)
    assert len(placed) >= 6  # most still find a place


def test_overlay_does_not_modify_the_input():
    image = Image.new("RGB", (50, 50), (10, 20, 30))
    render_overlay(image, [square("cat", 5, 5, 20, (50, 50))])
    assert image.getpixel((10, 10)) == (10, 20, 30)

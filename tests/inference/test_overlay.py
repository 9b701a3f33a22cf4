"""The overlay: tinted masks, boxes and labels; colours right; cost only where the masks are."""

import numpy as np
from PIL import Image

from segmentation.inference import Detection, render_overlay
from segmentation.inference.overlay import class_colour


def square(label, x0, y0, size, image_size, score=0.9):
    return Detection.from_region(
        label=label,
        score=score,
        box=(x0, y0, x0 + size, y0 + size),
        mask=np.ones((size, size), dtype=bool),
        origin=(x0, y0),
        image_size=image_size,
    )


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
    assert (overlay[untouched][:, 0] >= overlay[untouched][:, 2]).mean() > 0.95


def test_masked_pixels_get_half_their_class_colour_added_as_in_the_tutorial():
    image = Image.new("RGB", (200, 200), (100, 30, 200))
    det = square("cat", 50, 60, 80, (200, 200))
    out = np.asarray(render_overlay(image, [det])).astype(int)
    colour = np.array(class_colour("cat"))
    expected = np.minimum(np.array([100, 30, 200]) + colour // 2, 255)
    assert tuple(out[100, 90]) == tuple(expected)  # inside the mask, away from box and tag
    assert tuple(out[10, 190]) == (100, 30, 200)  # outside every mask and box


def test_tint_is_pixel_identical_to_the_tutorials_full_image_blend():
    import cv2

    rng = np.random.default_rng(3)
    array = rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    mask = rng.random((50, 70)) < 0.5
    det = Detection.from_region(
        label="bus",
        score=0.9,
        box=(30, 20, 100, 70),
        mask=mask,
        origin=(30, 20),
        image_size=(160, 120),
    )
    colour_mask = np.zeros_like(array)
    colour_mask[det.full_mask()] = class_colour("bus")
    tutorial = cv2.addWeighted(array, 1, colour_mask, 0.5, 0)
    ours = np.asarray(render_overlay(Image.fromarray(array), [det]))
    interior = np.zeros(array.shape[:2], dtype=bool)  # the mask minus the box outline drawn on top
    interior[25:65, 35:95] = det.full_mask()[25:65, 35:95]
    assert interior.sum() > 500
    assert np.array_equal(ours[interior], tutorial[interior])


def test_class_colours_are_stable_and_distinct():
    assert class_colour("person") == class_colour("person")
    assert class_colour("person") != class_colour("cat")
    assert class_colour("something new") == class_colour("something new")


def test_box_and_label_are_drawn_legibly_at_any_image_size():
    for size in [(64, 48), (640, 480), (4000, 3000)]:
        image = Image.new("RGB", size, (0, 0, 0))
        s = min(size) // 2
        det = square("dog", size[0] // 4, size[1] // 3, s, size)
        out = np.asarray(render_overlay(image, [det])).astype(int)
        tag = (np.abs(out - class_colour("dog")).sum(axis=2) == 0).sum()
        ink = np.argwhere((out == 255).all(axis=2))  # white text: nothing else is white here
        assert tag > 0 and len(ink) > 0, size
        text_height = ink[:, 0].max() - ink[:, 0].min() + 1
        assert text_height >= 0.01 * size[1], size  # still readable when the picture is shrunk


def test_label_stays_inside_the_image_for_boxes_at_the_top_edge():
    image = Image.new("RGB", (300, 200), (255, 255, 255))
    det = square("dog", 250, 0, 50, (300, 200))
    out = np.asarray(render_overlay(image, [det]))
    assert (np.abs(out[:20, 200:].astype(int) - class_colour("dog")).sum(axis=2) == 0).any()


def test_overlay_does_not_modify_the_input():
    image = Image.new("RGB", (50, 50), (10, 20, 30))
    render_overlay(image, [square("cat", 5, 5, 20, (50, 50))])
    assert image.getpixel((10, 10)) == (10, 20, 30)

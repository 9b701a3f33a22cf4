"""The photos segweb ships (see README.md here): what exports are checked and calibrated on.

Part of the runtime, so that ``make export`` and a worker's background export need neither the
test tools nor a download.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..image import load_image

FOLDER = Path(__file__).resolve().parent

#: The photos, in the order exports are checked on them.
NAMES: tuple[str, ...] = ("astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg")


def shipped_photos(names: tuple[str, ...] = NAMES) -> dict[str, Image.Image]:
    """The shipped photos by file name, plus the last one turned to portrait (the other
    orientation gives the networks other input shapes)."""
    photos = {name: load_image(FOLDER / name) for name in names}
    if names:
        photos[f"{names[-1]} (portrait)"] = photos[names[-1]].transpose(Image.Transpose.ROTATE_90)
    return photos

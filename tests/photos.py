"""Real photos that ship inside scikit-image, used across the tests (no network needed)."""

from pathlib import Path

import skimage.data

PHOTO_DIR = Path(skimage.data.__file__).parent

ASTRONAUT = PHOTO_DIR / "astronaut.png"  # a person (and a rocket, which COCO has no class for)
CHELSEA = PHOTO_DIR / "chelsea.png"  # a cat
COFFEE = PHOTO_DIR / "coffee.png"  # a cup and a spoon
ROCKET = PHOTO_DIR / "rocket.jpg"  # a JPEG
MOTORCYCLE = PHOTO_DIR / "motorcycle_left.png"  # a motorcycle

"""Errors the engine raises, each with a message a user can act on."""


class InferenceError(Exception):
    """Base class: everything the engine refuses or fails at."""


class InvalidImageError(InferenceError, ValueError):
    """The input is not an image we can decode (corrupt, truncated, unsupported)."""


class ImageTooLargeError(InvalidImageError):
    """The image has more pixels than the configured limit."""


class ImageShapeError(InvalidImageError):
    """The image's sides cannot be a photo's: too small, or far too long for their width."""


class ModelUnavailableError(InferenceError):
    """The requested model is unknown, or cannot run here (missing package, weights or GPU)."""


class WeightsError(ModelUnavailableError):
    """A weights file exists but cannot be loaded (corrupt, or made for another architecture)."""

"""The engine's error tree.

- `EngineError`: base of everything the engine raises on purpose.
  - `ImageError`: the input image is unusable (not an image, truncated, too large, empty crop).
    Its message is written for the person who sent the image.
  - `ModelError`: the network or its configuration is unusable (cannot load, tensor missing, shape or
    channel mismatch). Its message names what was expected and what exists, so the owner can fix it.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of the engine's deliberate errors."""


class ImageError(EngineError):
    """The image cannot be used; the message is readable by an end user."""


class ModelError(EngineError):
    """The model or its pre/post-processing does not fit; the message says what to change."""

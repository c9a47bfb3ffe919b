"""What a demo model is: the documents Percept registers for it, and how to build its SavedModel."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from schemas.networks import Preprocessing
from schemas.specs import SpecOutput
from schemas.versions import PostProcessing


@dataclass(frozen=True)
class DemoModel:
    """A real model built from data or weights shipped inside Python packages (nothing downloaded)."""

    key: str  # public spec id, stable across releases
    name: str
    description: str
    preprocessing: Preprocessing
    outputs: list[SpecOutput]
    post_processings: list[PostProcessing]
    build: Callable[[Path], None]  # writes a SavedModel directory (saved_model.pb + variables/) at the path
    sample_image: Callable[[], bytes]  # PNG bytes the model gets right, for the README walk-through and tests
    sample_label: str  # the label name the model answers for sample_image()

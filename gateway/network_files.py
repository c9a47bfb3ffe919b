"""Uploaded network files: multipart part names to paths inside the SavedModel directory."""

from __future__ import annotations

import re

from gateway.errors import InvalidInput

_VARIABLES = re.compile(r"^variables\.(index|data-\d{5}-of-\d{5})$")
_SAFE_SEGMENT = re.compile(r"^[\w.+-]+$")
GRAPH_FILES = ("saved_model.pb", "saved_model.pbtxt")


def saved_model_path(part_name: str) -> str:
    """`variables.index` → `variables/variables.index` (clients send basenames); others keep their path."""
    name = part_name.strip()
    if _VARIABLES.match(name):
        return f"variables/{name}"
    segments = name.split("/")
    if not all(_SAFE_SEGMENT.match(segment) and segment not in {".", ".."} for segment in segments):
        raise InvalidInput(
            "file names may only use letters, digits, `._+-` and `/` between names", field=name
        )
    return name


def layout(parts: dict[str, bytes], *, mean_file: str | None) -> dict[str, bytes]:
    files = {saved_model_path(name): data for name, data in parts.items()}
    if not any(name in files for name in GRAPH_FILES):
        raise InvalidInput(
            "upload the SavedModel graph as a file part named saved_model.pb", field="saved_model.pb"
        )
    if mean_file is not None:
        if mean_file not in files:
            raise InvalidInput(
                "name a file uploaded with the network", field="preprocessing.inputs[0].image.mean_file"
            )
        if not mean_file.endswith(".npy"):
            raise InvalidInput("mean files are .npy arrays", field="preprocessing.inputs[0].image.mean_file")
    return files

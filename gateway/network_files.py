"""Uploaded network files: multipart part names to paths inside the SavedModel directory."""

from __future__ import annotations

import re

from gateway.archives import GRAPH_FILES, is_archive, unpack_saved_model
from gateway.errors import InvalidInput

_VARIABLES = re.compile(r"^variables\.(index|data-\d{5}-of-\d{5})$")
_SAFE_SEGMENT = re.compile(r"^[\w.+-]+$")


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


def layout(parts: dict[str, bytes], *, mean_file: str | None, max_bytes: int) -> dict[str, bytes]:
    """The SavedModel folder: loose files as the official client sends them, or one archive of the folder."""
    archives = [name for name in parts if is_archive(name)]
    if len(archives) > 1:
        raise InvalidInput("upload at most one archive per network", field=archives[1])
    files = {saved_model_path(name): data for name, data in parts.items() if not is_archive(name)}
    if archives:
        unpacked = unpack_saved_model(archives[0], parts[archives[0]], max_bytes=max_bytes)
        clashes = sorted(set(unpacked) & set(files))
        if clashes:
            raise InvalidInput("given both inside the archive and as a file part", field=clashes[0])
        files |= {saved_model_path(path): data for path, data in unpacked.items()}
    if not any(name in files for name in GRAPH_FILES):
        raise InvalidInput(
            "upload the SavedModel graph as a file part named saved_model.pb, "
            "or the SavedModel folder as one .tar.gz or .zip",
            field="saved_model.pb",
        )
    if mean_file is not None:
        if mean_file not in files:
            raise InvalidInput(
                "name a file uploaded with the network", field="preprocessing.inputs[0].image.mean_file"
            )
        if not mean_file.endswith(".npy"):
            raise InvalidInput("mean files are .npy arrays", field="preprocessing.inputs[0].image.mean_file")
    return files

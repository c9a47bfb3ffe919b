"""SavedModel folders uploaded as one `.tar.gz`, `.tgz`, `.tar` or `.zip`, unpacked in memory, defensively.

Refused: absolute paths, `..`, links, devices and other special members; more than `max_entries` members; more
than `max_bytes` unpacked; a compression ratio above `max_ratio` (zip bombs). Nothing touches the disk here.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import PurePosixPath

from gateway.errors import InvalidInput

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
GRAPH_FILES = ("saved_model.pb", "saved_model.pbtxt")


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


class _Budget:
    def __init__(
        self, field: str, *, packed: int, max_bytes: int, max_entries: int, max_ratio: float
    ) -> None:
        self.field = field
        self.limit = min(max_bytes, int(max(packed, 1) * max_ratio))
        self.max_entries = max_entries
        self.unpacked = 0
        self.entries = 0

    def take(self, size: int) -> None:
        self.entries += 1
        self.unpacked += size
        if self.entries > self.max_entries:
            raise InvalidInput(f"the archive has more than {self.max_entries} members", field=self.field)
        if self.unpacked > self.limit:
            raise InvalidInput(
                f"the archive unpacks to more than {self.limit} bytes (size or compression ratio limit)",
                field=self.field,
            )


def _safe_path(raw: str, field: str) -> str | None:
    """The member's relative path; None for folder entries. Refuses anything that could escape."""
    path = PurePosixPath(raw)
    if raw.startswith(("/", "\\")) or path.is_absolute() or ".." in path.parts or "\\" in raw:
        raise InvalidInput(f"unsafe path in the archive: {raw!r}", field=field)
    parts = [part for part in path.parts if part not in ("", ".")]
    return "/".join(parts) if parts else None


def _tar_members(data: bytes, budget: _Budget) -> Iterator[tuple[str, bytes]]:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            for member in archive:
                path = _safe_path(member.name, budget.field)
                if member.isdir():
                    continue
                if not member.isfile():
                    raise InvalidInput(
                        f"links and special files are refused: {member.name!r}", field=budget.field
                    )
                budget.take(member.size)
                extracted = archive.extractfile(member)
                if path is None or extracted is None:
                    continue
                yield path, extracted.read(member.size + 1)[: member.size]
    except (tarfile.TarError, EOFError, OSError) as error:
        raise InvalidInput(f"not a readable tar archive ({error})", field=budget.field) from None


def _zip_members(data: bytes, budget: _Budget) -> Iterator[tuple[str, bytes]]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                path = _safe_path(info.filename, budget.field)
                if info.is_dir() or path is None:
                    continue
                mode = info.external_attr >> 16
                if mode and (mode & 0o170000) not in (0, 0o100000):
                    raise InvalidInput(
                        f"links and special files are refused: {info.filename!r}", field=budget.field
                    )
                budget.take(info.file_size)
                with archive.open(info) as member:
                    # Read one byte past the declared size: a lying header cannot smuggle in more.
                    content = member.read(info.file_size + 1)
                if len(content) != info.file_size:
                    raise InvalidInput(
                        f"member {info.filename!r} is not the size it declares", field=budget.field
                    )
                yield path, content
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError) as error:
        raise InvalidInput(f"not a readable zip archive ({error})", field=budget.field) from None


def unpack_saved_model(
    name: str, data: bytes, *, max_bytes: int, max_entries: int = 10_000, max_ratio: float = 100.0
) -> dict[str, bytes]:
    """Files of the SavedModel inside the archive, relative to the folder holding `saved_model.pb`."""
    budget = _Budget(
        name, packed=len(data), max_bytes=max_bytes, max_entries=max_entries, max_ratio=max_ratio
    )
    members = dict((_zip_members if name.lower().endswith(".zip") else _tar_members)(data, budget))
    roots = sorted(
        {
            path.rsplit("/", 1)[0] if "/" in path else ""
            for path in members
            if path.rsplit("/", 1)[-1] in GRAPH_FILES
        }
    )
    if len(roots) != 1:
        found = "none" if not roots else ", ".join(repr(root or ".") for root in roots)
        raise InvalidInput(
            f"the archive must hold exactly one SavedModel (saved_model.pb); found {found}", field=name
        )
    prefix = f"{roots[0]}/" if roots[0] else ""
    return {
        path.removeprefix(prefix): content for path, content in members.items() if path.startswith(prefix)
    }

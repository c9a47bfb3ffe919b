"""File keys: relative, "/"-separated names such as `networks/12/variables/variables.index`.

Both adapters check keys the same way, so a key that works on a laptop (files on disk) works in production
(GridFS) and can never escape the SQLite adapter's files directory.
"""

from __future__ import annotations

from store.port import StoreError

_FORBIDDEN_SEGMENTS = frozenset({"", ".", ".."})


def check_key(key: str) -> str:
    """Return `key` unchanged, or raise StoreError if it is absolute, empty or climbs out with `..`."""
    _check_segments(key, key.split("/"))
    return key


def check_prefix(prefix: str) -> str:
    """Like `check_key`, but a trailing "/" is allowed: `networks/12/` names everything under that folder.

    Prefixes match as strings, so `networks/1` also matches `networks/12/...`: end folders with "/".
    """
    if not prefix:
        raise StoreError("an empty file prefix would name every stored file")
    segments = prefix.split("/")
    _check_segments(prefix, segments[:-1] if prefix.endswith("/") else segments)
    return prefix


def _check_segments(key: str, segments: list[str]) -> None:
    if "\\" in key or "\x00" in key:
        raise StoreError(f"file key {key!r} contains a backslash or NUL")
    if any(segment in _FORBIDDEN_SEGMENTS for segment in segments):
        raise StoreError(f"file key {key!r} must be relative, without empty, '.' or '..' segments")

"""SavedModel archives are unpacked in memory and refuse anything that could escape or explode."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from gateway.archives import unpack_saved_model
from gateway.errors import InvalidInput

MODEL = {"saved_model.pb": b"graph", "variables/variables.index": b"index", "assets/vocab.txt": b"a"}


def tar_gz(members: dict[str, bytes], *, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra or []:
            archive.addfile(info)
    return buffer.getvalue()


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("prefix", ["", "mobilenet/1/", "./export/"])
def test_the_savedmodel_folder_is_found_wherever_it_sits(prefix: str) -> None:
    members = {prefix + name: data for name, data in MODEL.items()}
    if prefix:
        members["README"] = b"outside the SavedModel folder, so left out"
    assert unpack_saved_model("m.tar.gz", tar_gz(members), max_bytes=10**6) == MODEL
    assert unpack_saved_model("m.zip", zipped(members), max_bytes=10**6) == MODEL


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ({"../saved_model.pb": b"x"}, "unsafe path"),
        ({"/etc/saved_model.pb": b"x"}, "unsafe path"),
        ({"a/saved_model.pb": b"x", "b/saved_model.pb": b"y"}, "exactly one SavedModel"),
        ({"variables/variables.index": b"x"}, "exactly one SavedModel"),
    ],
)
def test_bad_layouts_are_refused(members: dict[str, bytes], reason: str) -> None:
    for name, data in (("m.tar.gz", tar_gz(members)), ("m.zip", zipped(members))):
        with pytest.raises(InvalidInput, match=reason):
            unpack_saved_model(name, data, max_bytes=10**6)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_links_and_devices_are_refused(kind: bytes) -> None:
    special = tarfile.TarInfo("variables/evil")
    special.type = kind
    special.linkname = "/etc/passwd"
    with pytest.raises(InvalidInput, match="links and special files"):
        unpack_saved_model("m.tar.gz", tar_gz(MODEL, extra=[special]), max_bytes=10**6)


def test_bombs_and_floods_are_refused() -> None:
    bomb = zipped({"saved_model.pb": b"0" * 20_000_000})
    with pytest.raises(InvalidInput, match="size or compression ratio"):
        unpack_saved_model("m.zip", bomb, max_bytes=10**9)
    with pytest.raises(InvalidInput, match="size or compression ratio"):
        unpack_saved_model("m.tar.gz", tar_gz(MODEL), max_bytes=3)
    flood = {f"assets/{index}": b"" for index in range(50)} | MODEL
    with pytest.raises(InvalidInput, match="more than 20 members"):
        unpack_saved_model("m.tar.gz", tar_gz(flood), max_bytes=10**6, max_entries=20)


def test_garbage_is_a_clear_error() -> None:
    with pytest.raises(InvalidInput, match="not a readable zip"):
        unpack_saved_model("m.zip", b"PK\x03\x04 nope", max_bytes=10**6)
    with pytest.raises(InvalidInput, match="not a readable tar"):
        unpack_saved_model("m.tar.gz", b"\x1f\x8b nope", max_bytes=10**6)

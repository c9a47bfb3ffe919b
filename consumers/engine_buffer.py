"""The memory a consumer hands its engine process batches in, shared instead of sent down the pipe.

A batch of eight 224x224 RGB inputs is 4.8 MB of float32. Pickled down a pipe it was copied five times
(pickle, the pipe's two ends, unpickle, stacking) and cost 11 ms of CPU per batch between the two processes,
about a tenth of what the model itself spent. Here the consumer stacks each batch straight into an anonymous
shared file (memfd) that the engine process maps too, and the pipe carries only where each array lies.

One buffer per engine slot, used by one request at a time (the slot's lock): the consumer writes the next
batch only after the engine has answered the last. It grows when a batch needs more and is handed to each new
process of the slot (its descriptor passed over the pipe's socket); being anonymous, it is gone once the last
process holding it ends, whatever kills them.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_ALIGN = 64  # each array starts on a cache line (and meets any SIMD alignment TensorFlow asks of inputs)
_MIN_BYTES = 1 << 20


@dataclass(frozen=True)
class SharedArray:
    """Where one array lies in the buffer: bytes from its start, shape and dtype."""

    offset: int
    shape: tuple[int, ...]
    dtype: str


class BatchBuffer:
    """The consumer's side: owns the memfd, writes batches into it."""

    def __init__(self) -> None:
        self._fd = -1
        self._map: mmap.mmap | None = None
        self.generation = 0  # bumped at each growth: a process mapped an older one must map it again

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def size(self) -> int:
        return len(self._map) if self._map is not None else 0

    def write(self, groups: Sequence[Sequence[np.ndarray]]) -> list[SharedArray]:
        """Stacks each group of equally shaped arrays into the buffer, one after the other."""
        places, offset = [], 0
        for group in groups:
            first = group[0]
            nbytes = first.nbytes * len(group)
            places.append(SharedArray(offset, (len(group), *first.shape), first.dtype.str))
            offset += -(-nbytes // _ALIGN) * _ALIGN
        self._ensure(offset)
        assert self._map is not None
        for group, place in zip(groups, places, strict=True):
            out = np.ndarray(place.shape, dtype=place.dtype, buffer=self._map, offset=place.offset)
            np.stack(group, out=out)
        return places

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _ensure(self, nbytes: int) -> None:
        if nbytes <= self.size:
            return
        self.close()
        size = max(_MIN_BYTES, 1 << (nbytes - 1).bit_length())
        self._fd = os.memfd_create("percept-batch", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, size)
        self._map = mmap.mmap(self._fd, size)
        self.generation += 1


class MappedBuffer:
    """The engine process's side: maps the descriptor it was handed, reads arrays out of it."""

    def __init__(self) -> None:
        self._map: mmap.mmap | None = None

    def attach(self, fd: int) -> None:
        if self._map is not None:
            self._map.close()
        try:
            self._map = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)  # the mapping holds the memory

    def view(self, place: SharedArray) -> np.ndarray:
        """The array, without a copy: valid until the consumer writes the next batch."""
        if self._map is None:
            raise RuntimeError("no batch buffer was attached")
        return np.ndarray(place.shape, dtype=place.dtype, buffer=self._map, offset=place.offset)

"""The batch buffer a consumer shares with its engine process: arrays written on one side are read on the
other, without a copy down the pipe, and a buffer that grew is handed over again."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle

import numpy as np
import pytest

from consumers.engine_buffer import BatchBuffer, MappedBuffer, SharedArray


def _reader(connection: Connection) -> None:
    """A process of its own, as the engine is: maps what it is handed, answers with what it reads."""
    mapped = MappedBuffer()
    while True:
        message = connection.recv()
        if message is None:
            return
        if message == "attach":
            mapped.attach(recv_handle(connection))
            connection.send("attached")
            continue
        connection.send([mapped.view(place).copy() for place in message])


@pytest.fixture
def reader() -> Iterator[tuple[Connection, int]]:
    ours, theirs = multiprocessing.get_context("fork").Pipe()
    process = multiprocessing.get_context("fork").Process(target=_reader, args=(theirs,))
    process.start()
    try:
        assert process.pid is not None
        yield ours, process.pid
    finally:
        ours.send(None)
        process.join(timeout=10)


def _hand_over(connection: Connection, pid: int, buffer: BatchBuffer) -> None:
    connection.send("attach")
    send_handle(connection, buffer.fd, pid)
    assert connection.recv() == "attached"


def test_groups_written_here_are_read_there_stacked_and_aligned(reader: tuple[Connection, int]) -> None:
    connection, pid = reader
    buffer = BatchBuffer()
    rng = np.random.default_rng(0)
    small = [rng.random((3, 5, 2), dtype=np.float32) for _ in range(3)]
    large = [rng.random((7, 7, 3), dtype=np.float32) for _ in range(2)]
    places = buffer.write([small, large])
    assert places[0] == SharedArray(0, (3, 3, 5, 2), "<f4")
    assert places[1].offset % 64 == 0 and places[1].offset >= small[0].nbytes * 3
    _hand_over(connection, pid, buffer)
    connection.send(places)
    read = connection.recv()
    np.testing.assert_array_equal(read[0], np.stack(small))
    np.testing.assert_array_equal(read[1], np.stack(large))
    buffer.close()


def test_a_batch_larger_than_the_buffer_grows_it_and_the_new_one_must_be_handed_over(
    reader: tuple[Connection, int],
) -> None:
    connection, pid = reader
    buffer = BatchBuffer()
    first = buffer.write([[np.full((4,), 1.0, dtype=np.float32)]])
    generation, size = buffer.generation, buffer.size
    _hand_over(connection, pid, buffer)
    connection.send(first)
    np.testing.assert_array_equal(connection.recv()[0], [[1.0] * 4])
    # Same size again: same buffer, nothing to hand over; the next batch overwrites the last.
    again = buffer.write([[np.full((4,), 2.0, dtype=np.float32)]])
    assert buffer.generation == generation
    connection.send(again)
    np.testing.assert_array_equal(connection.recv()[0], [[2.0] * 4])
    images = [np.full((224, 224, 3), index, dtype=np.float32) for index in range(8)]  # 4.8 MB
    places = buffer.write([images])
    assert buffer.generation == generation + 1 and buffer.size > size
    _hand_over(connection, pid, buffer)
    connection.send(places)
    np.testing.assert_array_equal(connection.recv()[0], np.stack(images))
    buffer.close()


def test_reading_before_any_buffer_was_handed_over_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no batch buffer"):
        MappedBuffer().view(SharedArray(0, (1,), "<f4"))

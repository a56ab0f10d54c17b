"""Length-prefixed frames over asyncio streams, shared by the benchmarks that use them.

A frame is a 4-byte big-endian length, then the payload (what ``aioipc.framed``
and the C floor send). These are the loops of the ``asyncio`` stream
contenders of ``bench_pipes.py`` and ``bench_sockets.py``; each script
makes its own ``StreamReader`` / ``StreamWriter`` and closes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from struct import Struct

import _harness as h

HEADER = Struct(">I")


def frame(size: int) -> bytes:
    """One frame of ``size`` payload bytes."""
    return HEADER.pack(size) + b"x" * size


async def send_frames(writer: asyncio.StreamWriter, a: h.RoleArgs, go_fd: int) -> None:
    """Wait for go, then ``write`` + ``drain`` ``a.count`` frames."""
    data = frame(a.size)
    h.wait_go(go_fd)
    for _ in range(a.count):
        writer.write(data)
        await writer.drain()


async def receive_frames(
    read_exactly: Callable[[int], Awaitable[bytes]], a: h.RoleArgs, go_fd: int
) -> dict[str, float]:
    """Start the clock, say go, read ``a.count`` frames with ``read_exactly(n)``
    (``StreamReader.readexactly``, or another library's)."""
    unpack = HEADER.unpack
    with h.Stopwatch(go_fd) as watch:
        for _ in range(a.count):
            (size,) = unpack(await read_exactly(4))
            message = await read_exactly(size)
    assert len(message) == a.size
    return watch.result(a.count, a.size)


async def ping_frames(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, a: h.RoleArgs
) -> dict[str, float]:
    """Time round trips: write a frame, read the echo."""
    data = frame(a.size)
    unpack = HEADER.unpack
    rounds = h.RoundTrips(a.count)
    for _ in rounds:
        writer.write(data)
        await writer.drain()
        (size,) = unpack(await reader.readexactly(4))
        await reader.readexactly(size)
    return rounds.result()


async def echo_frames(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Write every frame back until EOF."""
    pack, unpack = HEADER.pack, HEADER.unpack
    while header := await _read_header(reader):
        (size,) = unpack(header)
        writer.write(pack(size) + await reader.readexactly(size))
        await writer.drain()


async def _read_header(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return b""

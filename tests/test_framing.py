"""The sans-IO framer: pure, synchronous, property-tested."""

from __future__ import annotations

import itertools

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aioipc import FrameTooLarge, ProtocolError
from aioipc._core import framing
from aioipc._core.framing import EOF, NEED_DATA, PARSE_BATCH, Framer


def decode_all(framer: Framer) -> list[bytes]:
    out = []
    while (message := framer.next_message()) not in (NEED_DATA, EOF):
        assert isinstance(message, bytes)
        out.append(message)
    return out


@given(
    messages=st.lists(st.binary(max_size=300), max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_any_split_decodes_to_the_same_messages(messages: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(Framer.encode(m) for m in messages)
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    framer = Framer(max_size=1000)
    got: list[bytes] = []
    for a, b in itertools.pairwise(points):
        framer.feed(wire[a:b])
        got.extend(decode_all(framer))
    framer.feed(b"")
    got.extend(decode_all(framer))
    assert got == messages
    assert framer.next_message() is EOF


@given(messages=st.lists(st.binary(max_size=5000), max_size=10), chunk=st.integers(1, 70_000))
def test_reading_into_the_buffer_decodes_the_same(messages: list[bytes], chunk: int) -> None:
    wire = b"".join(Framer.encode(m) for m in messages)
    framer = Framer()
    got: list[bytes] = []
    pos = 0
    while pos < len(wire):
        view = framer.get_buffer(chunk)
        n = min(len(view), chunk, len(wire) - pos)
        view[:n] = wire[pos : pos + n]
        framer.buffer_updated(n)
        pos += n
        got.extend(decode_all(framer))
    assert got == messages


def test_all_complete_frames_of_a_chunk_are_parsed_in_one_pass() -> None:
    framer = Framer()
    framer.feed(b"".join(Framer.encode(b"m%d" % i) for i in range(100)) + b"\x00\x00")
    assert framer.buffered == 2
    assert decode_all(framer) == [b"m%d" % i for i in range(100)]


def test_header_over_max_size_is_refused_before_allocation() -> None:
    framer = Framer(max_size=1024)
    framer.feed(b"\x80\x00\x00\x00")  # announces 2 GiB
    with pytest.raises(FrameTooLarge) as info:
        framer.next_message()
    assert info.value.size == 2**31
    assert len(framer._buf) < 2**20


def test_whole_messages_before_a_bad_header_come_out_first() -> None:
    framer = Framer(max_size=1024)
    framer.feed(Framer.encode(b"one") + Framer.encode(b"two") + Framer.encode(b"x" * 2000))
    assert framer.next_message() == b"one"
    assert framer.next_message() == b"two"
    with pytest.raises(FrameTooLarge):
        framer.next_message()


def test_the_buffer_grows_with_the_bytes_that_arrive(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the grown buffers earlier tests gave back: one of those may be taken at once.
    monkeypatch.setattr(framing, "_LARGE", [])
    framer = Framer()  # 16 MiB max_size
    framer.feed(Framer.encode_header(16 * 2**20) + b"x")
    assert len(framer._buf) <= 64 * 1024, "a header alone must not allocate what it announces"
    framer.feed(b"x" * 200_000)
    assert len(framer._buf) <= 2 * 200_005
    framer.feed(b"x" * (16 * 2**20 - 200_001))
    assert len(framer.next_message()) == 16 * 2**20  # type: ignore[arg-type]
    framer.release()
    assert len(framer._buf) == 0, "a framer with nothing pending gives its buffer back"


def test_eof_inside_a_frame_is_a_protocol_error() -> None:
    framer = Framer()
    framer.feed(Framer.encode(b"hello")[:-1])
    framer.feed(b"")
    with pytest.raises(ProtocolError, match="inside a frame") as info:
        framer.next_message()
    assert isinstance(info.value, anyio.BrokenResourceError), (
        "a peer that died mid-message is a broken stream"
    )


def test_empty_messages_and_clean_eof() -> None:
    framer = Framer()
    framer.feed(Framer.encode(b"") * 3)
    framer.feed(b"")
    assert decode_all(framer) == [b"", b"", b""]
    assert framer.next_message() is EOF


def test_bad_max_size() -> None:
    with pytest.raises(ValueError, match="max_size"):
        Framer(max_size=-1)


def test_a_chunk_of_many_frames_is_parsed_a_batch_at_a_time() -> None:
    framer = Framer()
    framer.feed(Framer.encode(b"") * 5000)
    assert len(framer.parsed) == PARSE_BATCH, "a receiver gets back to its budget every batch"
    assert decode_all(framer) == [b""] * 5000


def _feed_in_reads(framer: Framer, wire: bytes, read: int = 65536) -> None:
    """Feed ``wire`` as a pipe would deliver it: into the framer's own buffer, a read at a time."""
    view = memoryview(wire)
    while view:
        buffer = framer.get_buffer()
        n = min(len(buffer), len(view), read)
        buffer[:n] = view[:n]
        framer.buffer_updated(n)
        view = view[n:]


def test_a_large_frame_grows_the_buffer_once_and_the_next_one_reuses_it() -> None:
    framer = Framer(max_size=2**21)
    big = b"x" * 2**20
    _feed_in_reads(framer, Framer.encode(big))
    assert framer.next_message() == big
    framer.release()  # the stream goes idle: the grown buffer goes back to the pool
    wire = memoryview(Framer.encode(big))
    framer.get_buffer()[:65536] = wire[:65536]
    framer.buffer_updated(65536)
    framer.get_buffer()  # full: it grows, straight to the pooled buffer rather than doubling again
    assert len(framer._buf) >= len(big) + 4
    _feed_in_reads(framer, bytes(wire[65536:]))
    assert framer.next_message() == big


def test_framers_never_share_their_parsed_messages() -> None:
    # A framer makes its deque at its first parse (compiled or not); until then it holds a shared empty one.
    first, second = Framer(), Framer()
    first.feed(Framer.encode(b"for the first"))
    assert second.next_message() is NEED_DATA
    assert first.next_message() == b"for the first"
    second.feed(Framer.encode(b"for the second"))
    assert (first.next_message(), second.next_message()) == (NEED_DATA, b"for the second")

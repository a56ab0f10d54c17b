"""Publish / subscribe over unix: and tcp: sockets: subject rules, filtering between processes,
the three slow-subscriber policies, subscribers that vanish or send garbage."""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from helpers import service, until
from hypothesis import given
from hypothesis import strategies as st

import aioipc
import aioipc.pubsub
from aioipc.pubsub import LocalPublisher, check_pattern, check_subject, matches

SUBSCRIBER = """
    import sys, aioipc, aioipc.pubsub

    async def main(address, *patterns):
        async with await aioipc.pubsub.subscribe(address, *patterns) as sub:
            print("subscribed", flush=True)
            async for subject, payload in sub:
                print(subject, payload.decode(), flush=True)
            print("end, dropped", sub.dropped, flush=True)

    aioipc.run(main(*sys.argv[2:]), loop=sys.argv[1])
"""

PUBLISHER = """
    import sys, anyio, aioipc, aioipc.pubsub

    async def main(address):
        pub = await aioipc.pubsub.publisher(address)
        print("bound", flush=True)
        await pub.wait_for_subscribers(1)
        await pub.publish("news.today", b"hello")
        print("published", flush=True)
        await anyio.sleep_forever()

    aioipc.run(main(sys.argv[2]), loop=sys.argv[1])
"""


# ---------------------------------------------------------------- subject rules


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("orders.created", "orders.created", True),
        ("orders.created", "orders.deleted", False),
        ("orders.*", "orders.created", True),
        ("orders.*", "orders.eu.created", False),
        ("orders.>", "orders.eu.created", True),
        ("orders.>", "orders", False),
        ("*.created", "users.created", True),
        ("*.*", "a", False),
        (">", "a.b.c", True),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.b.d", False),
        ("a.b", "a.b.c", False),
    ],
)
def test_matches_follows_nats_rules(pattern: str, subject: str, expected: bool) -> None:
    assert matches(pattern, subject) is expected


@pytest.mark.parametrize("subject", ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", "a\tb", "a*"])
def test_bad_subjects_are_value_errors(subject: str) -> None:
    with pytest.raises(ValueError, match="subject"):
        check_subject(subject)


@pytest.mark.parametrize("pattern", ["", "a..b", "a.>.b", "a*", "a.b>", "x y", ">.a"])
def test_bad_patterns_are_value_errors(pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        check_pattern(pattern)


def test_a_subject_must_be_a_str() -> None:
    with pytest.raises(TypeError):
        check_subject(b"a.b")  # type: ignore[arg-type]


tokens = st.lists(st.text("abcé-_", min_size=1, max_size=3), min_size=1, max_size=5)


def _reference(pattern: list[str], subject: list[str]) -> bool:
    regex = r"\.".join(".+" if t == ">" else "[^.]+" if t == "*" else re.escape(t) for t in pattern)
    return re.fullmatch(regex, ".".join(subject)) is not None


@given(tokens, st.lists(st.sampled_from(["keep", "*", ">"]), min_size=1, max_size=5), tokens)
def test_matches_agrees_with_a_regular_expression(
    subject: list[str], shape: list[str], other: list[str]
) -> None:
    # a pattern made from the subject (some tokens wildcards), and an unrelated one
    pattern = [s if how == "keep" else how for s, how in zip(subject, shape, strict=False)]
    if ">" in pattern:
        pattern = pattern[: pattern.index(">") + 1]
    for candidate in (subject, other):
        assert matches(".".join(pattern), ".".join(candidate)) is _reference(pattern, candidate)
    assert matches(".".join(subject), ".".join(subject))
    assert matches(".".join(subject[:1]) + ".>", ".".join(subject)) is (len(subject) > 1)


# ---------------------------------------------------------------- between processes


async def test_each_subscriber_process_gets_only_what_it_asked_for(tmp_ipc_dir: Path) -> None:
    address = f"unix:{tmp_ipc_dir / 'events.sock'}"
    async with await aioipc.pubsub.publisher(address) as pub:
        assert isinstance(pub, LocalPublisher)
        async with (
            service(tmp_ipc_dir, SUBSCRIBER, address, "orders.>") as orders,
            service(tmp_ipc_dir, SUBSCRIBER, address, "*.created", "users.deleted") as created,
        ):
            with anyio.fail_after(20):
                await orders.expect("subscribed")
                await created.expect("subscribed")
                assert pub.subscribers == 2
                for subject in ("orders.created", "users.created", "orders.eu.paid", "users.deleted", "x"):
                    await pub.publish(subject, subject.upper().encode())
                await pub.aclose()
                assert await orders.rest() == [
                    "orders.created ORDERS.CREATED",
                    "orders.eu.paid ORDERS.EU.PAID",
                    "end, dropped 0",
                ]
                assert await created.rest() == [
                    "orders.created ORDERS.CREATED",
                    "users.created USERS.CREATED",
                    "users.deleted USERS.DELETED",
                    "end, dropped 0",
                ]
                assert await orders.proc.wait() == 0
                assert await created.proc.wait() == 0


@pytest.mark.parametrize("kind", ["unix-abstract", "tcp"])
async def test_other_transports(kind: str, unique_name: str) -> None:
    address = f"unix:@{unique_name}" if kind == "unix-abstract" else "tcp:127.0.0.1:0"
    async with await aioipc.pubsub.publisher(address) as pub:
        with anyio.fail_after(10):
            async with await aioipc.pubsub.subscribe(pub.address, "a.*") as sub:
                await pub.publish("a.b", b"one")
                await pub.publish("b.b", b"not this")
                await pub.publish("a.c", bytearray(b"two"))
                assert [await sub.receive(), await sub.receive()] == [("a.b", b"one"), ("a.c", b"two")]


async def test_a_killed_subscriber_disturbs_nobody(tmp_ipc_dir: Path) -> None:
    address = f"unix:{tmp_ipc_dir / 'events.sock'}"
    async with await aioipc.pubsub.publisher(address, queue_size=4) as pub:
        assert isinstance(pub, LocalPublisher)
        async with (
            service(tmp_ipc_dir, SUBSCRIBER, address, ">") as doomed,
            await aioipc.pubsub.subscribe(address, ">") as survivor,
        ):
            with anyio.fail_after(20):
                await doomed.expect("subscribed")
                doomed.proc.kill()
                assert await doomed.proc.wait() == -signal.SIGKILL
                for i in range(2000):  # while the publisher finds out
                    await pub.publish("tick", b"%d" % i)
                    assert await survivor.receive() == ("tick", b"%d" % i)
                while pub.subscribers != 1:
                    await pub.publish("tick", b"more")
                    await survivor.receive()
            assert survivor.dropped == 0


async def test_a_killed_publisher_is_an_error_not_an_end(tmp_ipc_dir: Path) -> None:
    address = f"unix:{tmp_ipc_dir / 'events.sock'}"
    async with service(tmp_ipc_dir, PUBLISHER, address) as publisher:
        with anyio.fail_after(20):
            await publisher.expect("bound")
            async with await aioipc.pubsub.subscribe(address, "news.>") as sub:
                await publisher.expect("published")
                assert await sub.receive() == ("news.today", b"hello")
                publisher.proc.kill()
                with pytest.raises(anyio.BrokenResourceError):
                    await sub.receive()


async def test_garbage_from_a_subscriber_ends_only_its_connection(
    tmp_ipc_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    address = f"unix:{tmp_ipc_dir / 'events.sock'}"
    async with (
        await aioipc.pubsub.publisher(address) as pub,
        await aioipc.pubsub.subscribe(address, "a") as good,
    ):
        with caplog.at_level(logging.WARNING, logger="aioipc"), anyio.fail_after(20):
            for junk in (b"GET / HTTP/1.0\r\n\r\n", b"\x00\x00\x00\x05Sa..b", b"\x00\x00\x00\x02Xy"):
                socat = await anyio.run_process(
                    ["socat", "-t", "5", "-", f"UNIX-CONNECT:{tmp_ipc_dir / 'events.sock'}"],
                    input=junk,
                    check=False,
                )
                assert socat.stdout == b""  # nothing published reached it
            await pub.publish("a", b"still here")
            assert await good.receive() == ("a", b"still here")
            await until(lambda: sum("garbage" in r.getMessage() for r in caplog.records) == 3)


# ---------------------------------------------------------------- slow subscribers


async def test_drop_oldest_counts_every_dropped_message(tmp_ipc_dir: Path) -> None:
    address = f"unix:{tmp_ipc_dir / 'events.sock'}"
    total = 3000
    async with await aioipc.pubsub.publisher(address, queue_size=8) as pub:
        assert isinstance(pub, LocalPublisher)
        async with await aioipc.pubsub.subscribe(address, "n") as sub:
            with anyio.fail_after(20):
                for i in range(total):  # nobody reads: the socket buffers fill, then the queue
                    await pub.publish("n", b"%06d" % i + b"x" * 1000)
                got: list[int] = []
                async with anyio.create_task_group() as tg:
                    tg.start_soon(pub.aclose)  # sends what is queued, then the end
                    got += [int(payload[:6]) async for _, payload in sub]
    assert sub.dropped > 0
    assert len(got) + sub.dropped == total
    assert got == sorted(got)
    assert got[-8:] == list(range(total - 8, total))  # the newest are kept
    assert pub.dropped == sub.dropped


async def test_disconnect_policy_cuts_only_the_slow_subscriber(tmp_ipc_dir: Path) -> None:
    address = f"unix:{tmp_ipc_dir / 'events.sock'}"
    async with await aioipc.pubsub.publisher(address, policy="disconnect", queue_size=4) as pub:
        assert isinstance(pub, LocalPublisher)
        async with (
            await aioipc.pubsub.subscribe(address, "n") as slow,
            await aioipc.pubsub.subscribe(address, "n", policy="drop_oldest") as reader,
        ):
            with anyio.fail_after(20):
                i = 0
                while pub.subscribers == 2:
                    await pub.publish("n", b"%06d" % i + b"x" * 1000)
                    assert await reader.receive() == ("n", b"%06d" % i + b"x" * 1000)
                    i += 1
                with pytest.raises(anyio.BrokenResourceError, match="too slowly"):
                    async for _ in slow:
                        pass
                await pub.publish("n", b"after")
                assert await reader.receive() == ("n", b"after")
            assert reader.dropped == 0


async def test_a_subscriber_may_ask_to_be_disconnected(tmp_ipc_dir: Path) -> None:
    address = f"unix:{tmp_ipc_dir / 'events.sock'}"
    async with await aioipc.pubsub.publisher(address, queue_size=4) as pub:
        assert isinstance(pub, LocalPublisher)
        async with await aioipc.pubsub.subscribe(address, "n", policy="disconnect") as slow:
            with anyio.fail_after(20):
                while pub.subscribers:
                    await pub.publish("n", b"x" * 1000)
                with pytest.raises(anyio.BrokenResourceError):
                    async for _ in slow:
                        pass


async def test_block_policy_makes_publish_wait(tmp_ipc_dir: Path) -> None:
    address = f"unix:{tmp_ipc_dir / 'events.sock'}"
    total = 3000
    async with (
        await aioipc.pubsub.publisher(address, policy="block", queue_size=4) as pub,
        await aioipc.pubsub.subscribe(address, "n") as sub,
    ):
        sent = 0
        with anyio.move_on_after(0.5):  # nobody reads: publish() ends up waiting
            while sent < total:
                await pub.publish("n", b"%06d" % sent + b"x" * 1000)
                sent += 1
        assert 0 < sent < total
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:

                async def rest() -> None:
                    for i in range(sent, total):
                        await pub.publish("n", b"%06d" % i + b"x" * 1000)

                tg.start_soon(rest)
                got = [int((await sub.receive())[1][:6]) for _ in range(total)]
    assert got == list(range(total))
    assert sub.dropped == 0


# ---------------------------------------------------------------- errors


async def test_clear_errors(tmp_ipc_dir: Path, unique_name: str) -> None:
    address = f"unix:{tmp_ipc_dir / 'events.sock'}"
    with pytest.raises(ValueError, match="shm"):
        await aioipc.pubsub.publisher(f"shm:/{unique_name}")
    with pytest.raises(ValueError, match="policy"):
        await aioipc.pubsub.publisher(address, policy="newest")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        await aioipc.pubsub.subscribe(address, "a")
    async with await aioipc.pubsub.publisher(address, max_size=100) as pub:
        with pytest.raises(ValueError, match="at least one"):
            await aioipc.pubsub.subscribe(address)
        with pytest.raises(ValueError, match="pattern"):
            await aioipc.pubsub.subscribe(address, "a.>.b")
        async with await aioipc.pubsub.subscribe(address, ">"):
            with pytest.raises(ValueError, match="wildcards"):
                await pub.publish("a.*", b"")
            with pytest.raises(aioipc.FrameTooLarge):
                await pub.publish("a", b"x" * 100)
    with pytest.raises(anyio.ClosedResourceError):
        await pub.publish("a", b"")


async def test_subscribe_waits_for_the_publisher_up_to_its_timeout(tmp_ipc_dir: Path) -> None:
    address = f"unix:{tmp_ipc_dir / 'events.sock'}"
    with pytest.raises(TimeoutError):
        await aioipc.pubsub.subscribe(address, "a", timeout=0.1)
    subscribed = anyio.Event()
    with anyio.fail_after(20):

        async def subscriber() -> None:
            async with await aioipc.pubsub.subscribe(address, "a", timeout=20) as sub:
                subscribed.set()
                assert await sub.receive() == ("a", b"late")

        async with anyio.create_task_group() as tg:
            tg.start_soon(subscriber)
            async with await aioipc.pubsub.publisher(address) as pub:
                await subscribed.wait()
                await pub.publish("a", b"late")


def test_importing_aioipc_needs_no_nats() -> None:
    code = (
        "import sys; sys.modules['nats'] = None\n"
        "import aioipc, aioipc.pubsub\n"
        "try:\n"
        "    aioipc.run(aioipc.pubsub.subscribe('nats://127.0.0.1:1', 'a'))\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert "aioipc[nats]" in out.stdout

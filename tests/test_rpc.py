"""aioipc.rpc: JSON-RPC 2.0 between processes, over every connection-oriented scheme and a spawn channel."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import Service, loop_name, service

import aioipc
import aioipc.process
import aioipc.rpc
from aioipc._core.objects import _Json, resolve_codec

SERVICE = """
    import asyncio, collections, contextvars, sys
    import anyio
    import aioipc, aioipc.rpc

    SEEN = contextvars.ContextVar("seen")

    class Service:
        def __init__(self):
            self.events = collections.defaultdict(asyncio.Event)
            self.notes = []
            self.waited = 0

        async def add(self, a, b):
            return a + b

        async def echo(self, value, seconds=0):
            await asyncio.sleep(seconds)
            return value

        async def wait_for(self, name):
            self.waited += 1
            await self.events[name].wait()
            return name

        async def waits_begun(self):
            return self.waited

        async def release(self, name):
            self.events[name].set()

        async def fail(self, message):
            raise ValueError(message)

        async def refuse(self):
            raise aioipc.rpc.RemoteError(-32001, "refused", {"why": "a test"})

        async def unencodable(self):
            return {1, 2}

        async def big(self, size):
            return "x" * size

        async def note(self, text):
            self.notes.append(text)

        async def notes_taken(self):
            return self.notes

        async def same_task(self, seconds):
            task = asyncio.current_task()
            with anyio.fail_after(5):  # a cancel scope entered before the first wait
                await asyncio.sleep(seconds)
            async with asyncio.timeout(5):
                await asyncio.sleep(seconds)
            with anyio.move_on_after(0.01):  # scopes that fire cancel this method, nothing else
                await asyncio.sleep(10)
            try:
                async with asyncio.timeout(0.01):
                    await asyncio.sleep(10)
            except TimeoutError:
                pass
            return asyncio.current_task() is task

        async def context_var(self, value, seconds=0):
            before = SEEN.get(None)
            SEEN.set(value)
            await asyncio.sleep(seconds)
            return [before, SEEN.get()]

        async def cancel_self(self, seconds):
            if seconds:
                await asyncio.sleep(seconds)
            raise asyncio.CancelledError

        async def cancel_own_task(self):
            asyncio.current_task().cancel()  # and return normally: the next wait of this task raises
            return "done"

        def _private(self):
            return "never served"

    async def main(address, options):
        server = await aioipc.rpc.serve(address, Service(), **options)
        async with aioipc.graceful_shutdown(timeout=5), server:
            print(server.address, flush=True)
            await server.serve_forever()

    aioipc.run(main(sys.argv[2], eval(sys.argv[3])), loop=sys.argv[1])
"""


@asynccontextmanager
async def rpc_server(tmp_path: Path, address: str, **options: Any) -> AsyncIterator[tuple[Service, str]]:
    """The service above in a child process; yields it and its bound address."""
    async with service(tmp_path, SERVICE, address, repr(options)) as child:
        with anyio.fail_after(30):
            bound = (await child.line()).strip()
        yield child, bound


ADDRESSES: dict[str, Callable[[Path], str]] = {
    "unix": lambda d: f"unix:{d}/rpc.sock",
    "abstract": lambda d: f"unix:@{d.name}-rpc",
    "tcp": lambda d: "tcp:127.0.0.1:0",
    "seqpacket": lambda d: f"unix+seqpacket:{d}/rpc.sock",
}


@pytest.mark.parametrize("scheme", ADDRESSES)
async def test_calls_over_every_connection_scheme(scheme: str, tmp_path: Path, tmp_ipc_dir: Path) -> None:
    async with (
        rpc_server(tmp_path, ADDRESSES[scheme](tmp_ipc_dir)) as (_, address),
        await aioipc.rpc.connect(address) as client,
    ):
        with anyio.fail_after(20):
            assert await client.call("add", 1, 2, timeout=5) == 3
            assert await client.call("add", a="x", b="y") == "xy"
            assert await client.call("echo", {"nested": [1, None, "é"]}) == {"nested": [1, None, "é"]}
            await client.notify("note", "hi")
            await client.notify("no_such_method")  # a notification is never answered, even in error
            assert await client.call("notes_taken") == ["hi"]


async def test_remote_errors_carry_code_message_and_data(tmp_path: Path, tmp_ipc_dir: Path) -> None:
    async with (
        rpc_server(tmp_path, f"unix:{tmp_ipc_dir}/rpc.sock") as (_, address),
        await aioipc.rpc.connect(address) as client,
    ):
        with anyio.fail_after(20):
            with pytest.raises(aioipc.rpc.RemoteError) as missing:
                await client.call("nope")
            assert missing.value.code == aioipc.rpc.METHOD_NOT_FOUND == -32601
            assert isinstance(missing.value, aioipc.IPCError)
            with pytest.raises(aioipc.rpc.RemoteError) as private:
                await client.call("_private")
            assert private.value.code == -32601
            with pytest.raises(aioipc.rpc.RemoteError) as params:
                await client.call("add", 1)
            assert params.value.code == -32602
            with pytest.raises(aioipc.rpc.RemoteError) as raised:
                await client.call("fail", "broken on purpose")
            assert (raised.value.code, raised.value.message) == (-32603, "Internal error")
            assert raised.value.data == {"type": "ValueError", "message": "broken on purpose"}
            with pytest.raises(aioipc.rpc.RemoteError) as refused:
                await client.call("refuse")
            assert (refused.value.code, refused.value.message) == (-32001, "refused")
            assert refused.value.data == {"why": "a test"}
            with pytest.raises(aioipc.rpc.RemoteError) as unencodable:  # a result JSON cannot carry
                await client.call("unencodable")
            assert (unencodable.value.code, unencodable.value.data["type"]) == (-32603, "TypeError")
            with pytest.raises(TypeError):  # params JSON cannot carry: nothing is sent
                await client.call("echo", {1, 2})
            assert await client.call("echo", ['"quoted"\n', "é", 1.5, None, True]) == [
                '"quoted"\n',
                "é",
                1.5,
                None,
                True,
            ]
            assert await client.call("add", 2, 2) == 4  # the connection went on through all of it


def frame(message: bytes) -> bytes:
    return struct.pack(">I", len(message)) + message


async def exchange(stream: Any, message: bytes) -> Any:
    await stream.send(message)
    return json.loads(await stream.receive())


def error(code: int, request_id: Any) -> tuple[int, Any]:
    return code, request_id


SPEC_CASES = [
    (b"{not json", error(-32700, None)),
    (b"\xff\xfe", error(-32700, None)),
    (b"42", error(-32600, None)),
    (b"[]", error(-32600, None)),
    (b'{"jsonrpc": "1.0", "id": 7, "method": "add", "params": [1, 2]}', error(-32600, 7)),
    (b'{"id": "s", "method": "add", "params": [1, 2]}', error(-32600, "s")),
    (b'{"jsonrpc": "2.0", "id": 8, "method": 5}', error(-32600, 8)),
    (b'{"jsonrpc": "2.0", "id": {"x": 1}, "method": "add"}', error(-32600, None)),
    (b'{"jsonrpc": "2.0", "id": 9, "method": "add", "params": 3}', error(-32600, 9)),
    (b'{"jsonrpc": "2.0", "id": 10, "method": "nope"}', error(-32601, 10)),
    (b'{"jsonrpc": "2.0", "id": 11, "method": "add", "params": {"a": 1}}', error(-32602, 11)),
    (b'{"jsonrpc": "2.0", "id": null, "method": "fail", "params": ["x"]}', error(-32603, None)),
    (b'{"jsonrpc": "2.0", "id": 12, "method": "add", "params": [1, 2]} x', error(-32700, None)),
    (b"", error(-32700, None)),
]


async def test_spec_error_codes_from_a_raw_peer(tmp_path: Path, tmp_ipc_dir: Path) -> None:
    async with (
        rpc_server(tmp_path, f"unix:{tmp_ipc_dir}/rpc.sock") as (_, address),
        await aioipc.connect(address) as raw,
    ):
        with anyio.fail_after(20):
            for message, (code, request_id) in SPEC_CASES:
                response = await exchange(raw, message)
                assert response == {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "error": response["error"],
                }, message
                assert response["error"]["code"] == code, message
                assert isinstance(response["error"]["message"], str)
            ok = await exchange(raw, b'{"jsonrpc": "2.0", "id": "a", "method": "add", "params": [1, 2]}')
            assert ok == {"jsonrpc": "2.0", "result": 3, "id": "a"}
            spaced = await exchange(
                raw, b' \n{"jsonrpc": "2.0", "id": "b", "method": "add", "params": [2, 2]}\t'
            )
            assert spaced == {"jsonrpc": "2.0", "result": 4, "id": "b"}  # whitespace around JSON is JSON


def test_the_json_codec_forgets_a_failed_encode() -> None:
    codec = resolve_codec("json")
    assert isinstance(codec, _Json)
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="Circular"):
        codec.encode(cycle)
    cycle.clear()
    assert codec.decode(codec.encode([cycle, {"k": cycle}])) == [[], {"k": []}]  # no cycle seen now
    with pytest.raises(TypeError):
        codec.encode({"x": object()})
    assert codec.decode(codec.encode("é")) == "é"
    assert [codec.dumps(value) for value in ("é\n", 7, True, None, 1.5)] == [
        '"é\\n"',
        "7",
        "true",
        "null",
        "1.5",
    ]


async def test_batches_and_notifications(tmp_path: Path, tmp_ipc_dir: Path) -> None:
    async with (
        rpc_server(tmp_path, f"unix:{tmp_ipc_dir}/rpc.sock") as (_, address),
        await aioipc.connect(address) as raw,
    ):
        with anyio.fail_after(20):
            batch = [
                {"jsonrpc": "2.0", "id": 1, "method": "add", "params": [1, 2]},
                {"jsonrpc": "2.0", "method": "note", "params": ["from a batch"]},
                {"jsonrpc": "2.0", "id": 2, "method": "nope"},
                7,
            ]
            responses = await exchange(raw, json.dumps(batch).encode())
            by_id = {r["id"]: r for r in responses if r["id"] is not None}
            assert by_id[1]["result"] == 3
            assert by_id[2]["error"]["code"] == -32601
            assert [r["error"]["code"] for r in responses if r["id"] is None] == [-32600]
            assert len(responses) == 3  # the notification got nothing
            # only notifications: no response at all; the next answer is the next request's
            await raw.send(b'[{"jsonrpc": "2.0", "method": "note", "params": ["n"]}]')
            await raw.send(b'{"jsonrpc": "2.0", "method": "nope"}')
            notes: list[str] = []
            while notes != ["from a batch", "n"]:  # notifications run concurrently with later requests
                reply = await exchange(raw, b'{"jsonrpc": "2.0", "id": 3, "method": "notes_taken"}')
                assert reply["id"] == 3  # the next response is always this request's
                notes = reply["result"]


async def test_out_of_order_completion_and_timeouts_leave_the_connection_usable(
    tmp_path: Path, tmp_ipc_dir: Path
) -> None:
    async with (
        rpc_server(tmp_path, f"unix:{tmp_ipc_dir}/rpc.sock") as (_, address),
        await aioipc.rpc.connect(address) as client,
        anyio.create_task_group() as tg,
    ):
        with anyio.fail_after(20):
            first: list[str] = []

            async def call_first() -> None:
                first.append(await client.call("wait_for", "first"))

            tg.start_soon(call_first)
            # later calls complete while the first one is still running on the server
            assert await client.call("echo", "second") == "second"
            assert first == []
            # a call that times out, and one that is cancelled: their late replies are dropped
            with pytest.raises(TimeoutError):
                await client.call("wait_for", "late", timeout=0.05)
            with anyio.move_on_after(0.05) as scope:
                await client.call("wait_for", "cancelled")
            assert scope.cancelled_caught
            await client.call("release", "late")
            await client.call("release", "cancelled")
            assert await client.call("add", 20, 22) == 42
            await client.call("release", "first")
    assert first == ["first"]


async def test_many_callers_with_timeouts_share_one_connection(tmp_path: Path, tmp_ipc_dir: Path) -> None:
    async with (
        rpc_server(tmp_path, f"unix:{tmp_ipc_dir}/rpc.sock") as (_, address),
        await aioipc.rpc.connect(address) as client,
    ):
        answered = timed_out = 0

        async def caller(i: int) -> None:
            nonlocal answered, timed_out
            for j in range(20):
                seconds, timeout = (0.002, 0.001) if (i + j) % 4 == 0 else (0, None)
                try:
                    assert await client.call("echo", [i, j], seconds, timeout=timeout) == [i, j]
                    answered += 1
                except TimeoutError:
                    timed_out += 1

        with anyio.fail_after(30):
            await asyncio.gather(*(caller(i) for i in range(32)))
            assert answered + timed_out == 32 * 20
            assert answered >= 32 * 20 * 3 // 4  # every call without a timeout was answered
            assert await client.call("add", 1, 2) == 3


async def test_a_caller_told_to_read_while_still_sending_gets_its_own_answer(
    tmp_path: Path, tmp_ipc_dir: Path
) -> None:
    # 64 callers of large messages: sends wait for room, and the reader hands over to
    # callers that are still sending. Each must get its own answer, never the hand-over token.
    payload = "x" * 60_000
    async with (
        rpc_server(tmp_path, f"unix:{tmp_ipc_dir}/rpc.sock") as (_, address),
        await aioipc.rpc.connect(address) as client,
    ):

        async def caller(i: int) -> None:
            for j in range(8):
                assert await client.call("echo", [i, j, payload], 0) == [i, j, payload]

        with anyio.fail_after(60):
            await asyncio.gather(*(caller(i) for i in range(64)))


async def test_concurrency_is_bounded_per_connection(tmp_path: Path, tmp_ipc_dir: Path) -> None:
    async with (
        rpc_server(tmp_path, f"unix:{tmp_ipc_dir}/rpc.sock", max_concurrency=2) as (_, address),
        await aioipc.rpc.connect(address) as busy,
        await aioipc.rpc.connect(address) as other,
        anyio.create_task_group() as tg,
    ):
        with anyio.fail_after(20):
            tg.start_soon(busy.call, "wait_for", "a")
            tg.start_soon(busy.call, "wait_for", "b")
            third = asyncio.ensure_future(busy.call("echo", "third"))
            with anyio.move_on_after(0.3):  # both slots are taken: the third request waits unread
                await asyncio.shield(third)
            assert not third.done()
            assert await other.call("echo", "other connection") == "other connection"
            await other.call("release", "a")
            assert await third == "third"
            await other.call("release", "b")


async def test_a_method_keeps_its_task_and_a_context_of_its_own(tmp_path: Path, tmp_ipc_dir: Path) -> None:
    async with (
        rpc_server(tmp_path, f"unix:{tmp_ipc_dir}/rpc.sock") as (_, address),
        await aioipc.rpc.connect(address) as client,
    ):
        with anyio.fail_after(20):
            # across waits its task stays its own: cancel scopes and timeouts it enters work, fired or not
            assert await client.call("same_task", 0) is True
            assert await client.call("same_task", 0.01) is True
            # a context variable a method sets is not seen by the next request, waiting or not
            for seconds in (0, 0.01, 0, 0.01):
                assert await client.call("context_var", seconds, seconds) == [None, seconds]
            both = list(
                await asyncio.gather(client.call("context_var", "a", 0.05), client.call("context_var", "b"))
            )
            assert both == [[None, "a"], [None, "b"]]
            # a method that cancels itself, at once or after a wait, answers nothing and harms nothing
            await client.notify("cancel_self", 0)
            await client.notify("cancel_self", 0.01)
            assert await client.call("add", 1, 2) == 3
            assert await client.call("same_task", 0.01) is True


async def test_a_method_that_cancels_the_task_that_reads_ends_only_its_connection(
    tmp_path: Path, tmp_ipc_dir: Path
) -> None:
    async with (
        rpc_server(tmp_path, f"unix:{tmp_ipc_dir}/rpc.sock") as (_, address),
        await aioipc.rpc.connect(address) as client,
        await aioipc.rpc.connect(address) as other,
    ):
        with anyio.fail_after(20):
            # answered at once, in the task that reads this connection; the cancellation it left
            # there ends that reader, and so this connection (its serving used to wait forever)
            assert await client.call("cancel_own_task") == "done"
            with pytest.raises(anyio.BrokenResourceError):
                await client.call("echo", 1)
            assert await other.call("echo", 2) == 2
        sock = raw_socket(address)
        with sock:
            # two requests in one write: the reader takes both from one read. The cancellation
            # the first leaves ends the connection before the second starts (which it would
            # cancel instead: a request never answered, on a connection that goes on)
            first = frame(b'{"jsonrpc": "2.0", "id": 1, "method": "cancel_own_task"}')
            second = frame(b'{"jsonrpc": "2.0", "id": 2, "method": "echo", "params": [2]}')
            await anyio.to_thread.run_sync(sock.sendall, first + second)
            reply = json.loads(await anyio.to_thread.run_sync(read_frame, sock))
            assert reply == {"jsonrpc": "2.0", "result": "done", "id": 1}
            assert await anyio.to_thread.run_sync(sock.recv, 1) == b""  # the connection ended
        with anyio.fail_after(20):
            assert await other.call("echo", 3) == 3


async def test_a_raw_peer_that_floods_and_reads_nothing_is_held_to_the_bound(
    tmp_path: Path, tmp_ipc_dir: Path
) -> None:
    names = [f"flood-{i}" for i in range(6)]
    async with (
        rpc_server(tmp_path, f"unix:{tmp_ipc_dir}/rpc.sock", max_concurrency=2) as (_, address),
        await aioipc.connect(address) as raw,  # a plain framed stream, not our client
        await aioipc.rpc.connect(address) as other,
    ):
        with anyio.fail_after(20):
            for i, name in enumerate(names):
                request = {"jsonrpc": "2.0", "id": i, "method": "wait_for", "params": [name]}
                await raw.send(json.dumps(request).encode())
            while await other.call("waits_begun") < 2:
                pass
            for _ in range(20):  # many turns of the server's loop: the other four stay unread
                assert await other.call("waits_begun") == 2
            for name in names:
                await other.call("release", name)
            replies = [json.loads(await raw.receive()) for _ in names]
            assert sorted(replies, key=lambda r: r["id"]) == [
                {"jsonrpc": "2.0", "result": name, "id": i} for i, name in enumerate(names)
            ]
            assert await other.call("waits_begun") == len(names)
            # each reply came once: the next message is the answer to the next request
            last = await exchange(raw, b'{"jsonrpc": "2.0", "id": "last", "method": "add", "params": [1, 2]}')
            assert last == {"jsonrpc": "2.0", "result": 3, "id": "last"}


def raw_socket(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(address.removeprefix("unix:"))
    return sock


def read_frame(sock: socket.socket) -> bytes:
    header = sock.recv(4, socket.MSG_WAITALL)
    (size,) = struct.unpack(">I", header)
    return sock.recv(size, socket.MSG_WAITALL)


async def test_garbage_gets_parse_errors_and_an_oversize_frame_ends_only_its_connection(
    tmp_path: Path, tmp_ipc_dir: Path
) -> None:
    async with (
        rpc_server(tmp_path, f"unix:{tmp_ipc_dir}/rpc.sock", max_size=1024) as (_, address),
        await aioipc.rpc.connect(address) as bystander,
    ):
        sock = raw_socket(address)
        with sock:
            for garbage in (b"\x00\x01\x02", b"GET / HTTP/1.1\r\n\r\n", b"{" * 500):
                await anyio.to_thread.run_sync(sock.sendall, frame(garbage))
                reply = json.loads(await anyio.to_thread.run_sync(read_frame, sock))
                assert reply["error"]["code"] == -32700
            await anyio.to_thread.run_sync(sock.sendall, struct.pack(">I", 1 << 30))  # over max_size
            assert await anyio.to_thread.run_sync(sock.recv, 1) == b""  # that connection ends
        with anyio.fail_after(20):
            assert await bystander.call("add", 1, 1) == 2
            with pytest.raises(aioipc.rpc.RemoteError) as too_large:  # a result over the server's max_size
                await bystander.call("big", 5000)
            assert too_large.value.code == -32603
            assert too_large.value.data["type"] == "FrameTooLarge"
            assert await bystander.call("add", 2, 2) == 4


CHANNEL_SERVICE = """
    import sys
    import aioipc, aioipc.rpc

    async def add(a, b):
        return a + b

    def shout(text):  # a plain function serves too
        return text.upper()

    async def main():
        channel = await aioipc.parent_channel()
        await aioipc.rpc.serve_stream(channel, {"add": add, "shout": shout}, codec=sys.argv[2])
        print("stream ended", flush=True)

    aioipc.run(main(), loop=sys.argv[1])
"""


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_serve_stream_over_a_spawn_channel(codec: str, tmp_path: Path) -> None:
    async with service(tmp_path, CHANNEL_SERVICE, codec, channel=True) as child:
        assert child.proc.channel is not None
        async with aioipc.rpc.Client(child.proc.channel, codec=codec) as client:
            with anyio.fail_after(20):
                results = await asyncio.gather(*(client.call("add", i, i) for i in range(100)))
                assert results == [2 * i for i in range(100)]
                assert await client.call("shout", text="hi") == "HI"
                with pytest.raises(aioipc.rpc.RemoteError) as bad:
                    await client.call("shout", 1, 2)
                assert bad.value.code == -32602
        with anyio.fail_after(20):
            await child.expect("stream ended")
            assert await child.proc.wait() == 0


async def test_a_server_that_goes_away_fails_pending_calls(tmp_path: Path, tmp_ipc_dir: Path) -> None:
    async with (
        rpc_server(tmp_path, f"unix:{tmp_ipc_dir}/rpc.sock") as (child, address),
        await aioipc.rpc.connect(address) as client,
    ):
        with anyio.fail_after(20):
            pending = asyncio.ensure_future(client.call("wait_for", "never"))
            assert await client.call("echo", 1) == 1  # the first request reached the server
            child.proc.kill()
            with pytest.raises(anyio.BrokenResourceError):
                await pending
            with pytest.raises(anyio.BrokenResourceError):
                await client.call("echo", 2)


async def test_cli_call(tmp_path: Path, tmp_ipc_dir: Path) -> None:
    async with rpc_server(tmp_path, f"unix:{tmp_ipc_dir}/rpc.sock") as (_, address):

        async def cli(*args: str) -> tuple[int, str, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "aioipc", "--loop", loop_name(), "call", *args,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            with anyio.fail_after(30):
                out, err = await proc.communicate()
            assert proc.returncode is not None
            return proc.returncode, out.decode(), err.decode()

        added, echoed, missing, failed = await asyncio.gather(  # four runs of the command at once
            cli(address, "add", "1", "2"),
            cli(address, "echo", "plain words"),
            cli(address, "nope"),
            cli(address, "fail", "why"),
        )
        assert added == (0, "3\n", "")
        assert echoed == (0, '"plain words"\n', "")
        assert missing == (1, "", 'aioipc: remote error -32601: Method not found (data: "nope")\n')
        status, out, err = failed
        assert (status, out) == (1, "")
        assert "-32603" in err
        assert "Traceback" not in err

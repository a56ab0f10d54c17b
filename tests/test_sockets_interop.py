"""Interop with programs we did not write: socat as client and server, openssl certificates for TLS."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import struct
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import keep_busy

import aioipc

socat = pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")


async def raw_echo(stream: Any) -> None:
    async for chunk in stream:
        await stream.send(chunk)


async def framed_echo(msgs: Any) -> None:
    async for message in msgs:
        await msgs.send(message)


async def run_socat_client(target: str, data: bytes) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        "socat", "-t", "10", "-", target, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    with anyio.fail_after(20):
        out, _ = await proc.communicate(data)
    assert proc.returncode == 0
    return out


def frame(message: bytes) -> bytes:
    return struct.pack(">I", len(message)) + message


@socat
@pytest.mark.parametrize("scheme", ["unix", "tcp"])
async def test_socat_client_against_aioipc_servers(scheme: str, tmp_ipc_dir: Path) -> None:
    address = f"unix:{tmp_ipc_dir}/s.sock" if scheme == "unix" else "tcp:127.0.0.1:0"
    async with await aioipc.serve(address, raw_echo, framing=None) as server:
        target = (
            f"UNIX-CONNECT:{tmp_ipc_dir}/s.sock"
            if scheme == "unix"
            else "TCP:" + server.address.removeprefix("tcp:")
        )
        assert await run_socat_client(target, b"hello from socat\n") == b"hello from socat\n"
    async with await aioipc.serve(address, framed_echo) as server:
        target = target if scheme == "unix" else "TCP:" + server.address.removeprefix("tcp:")
        wire = frame(b"one") + frame(b"") + frame(b"three")
        assert await run_socat_client(target, wire) == wire


@asynccontextmanager
async def socat_server(listen: str) -> AsyncIterator[str]:
    """A socat echo server; yields the address it listens on, as socat reports it."""
    proc = await asyncio.create_subprocess_exec(
        "socat", "-d", "-d", listen, "PIPE", stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    try:
        lines = []
        with anyio.fail_after(20):
            while b"listening on" not in (line := await proc.stderr.readline()):
                lines.append(line)
                assert line, f"socat exited before listening: {b''.join(lines).decode()}"
        yield line.decode().rsplit(" ", 1)[1].strip().strip('"')
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@socat
async def test_aioipc_client_against_socat_unix_server(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "socat.sock"
    async with socat_server(f"UNIX-LISTEN:{path}"), await aioipc.connect(f"unix:{path}") as msgs:
        with anyio.fail_after(20):
            for message in (b"framed", b"", b"x" * 100_000):
                await msgs.send(message)
                assert await msgs.receive() == message
    path = tmp_ipc_dir / "socat2.sock"  # the first socat may have been killed before removing its file
    async with socat_server(f"UNIX-LISTEN:{path}"), await aioipc.connect(f"unix:{path}", framing=None) as raw:
        with anyio.fail_after(20):
            await raw.send(b"raw bytes")
            await raw.send_eof()
            assert b"".join([chunk async for chunk in raw]) == b"raw bytes"


@socat
async def test_aioipc_client_against_socat_tcp_server() -> None:
    async with socat_server("TCP-LISTEN:0,bind=127.0.0.1") as bound:
        host, port = bound.rsplit(":", 1)
        async with await aioipc.connect(f"tcp:{host}:{port}") as msgs:
            with anyio.fail_after(20):
                await msgs.send(b"over tcp")
                assert await msgs.receive() == b"over tcp"


@pytest.fixture
def tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1 made by openssl; (server, client) contexts."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    import subprocess

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


async def test_tls_framed_echo(tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls_contexts
    async with await aioipc.serve("tcp:127.0.0.1:0", framed_echo, ssl=server_ctx) as server:
        async with await aioipc.connect(server.address, ssl=client_ctx) as msgs:
            with anyio.fail_after(20):
                for message in (b"secret", b"", b"y" * 300_000):
                    await msgs.send(message)
                    assert await msgs.receive() == message
        port = int(server.address.rsplit(":", 1)[1])
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
            await aioipc.connect(f"tcp:127.0.0.1:{port}", ssl=True)  # the system CAs do not know it
        async with await aioipc.connect(server.address, ssl=client_ctx, timeout=20) as msgs:
            with anyio.fail_after(20):  # the failed handshake cost only its own connection
                await msgs.send(b"again")
                assert await msgs.receive() == b"again"


async def test_tls_idle_timeout_closes_only_the_idle_client(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls_contexts
    options: dict[str, Any] = {"ssl": server_ctx, "idle_timeout": 0.3}
    async with await aioipc.serve("tcp:127.0.0.1:0", framed_echo, **options) as server:
        idle = await aioipc.connect(server.address, ssl=client_ctx)
        busy = await aioipc.connect(server.address, ssl=client_ctx)
        async with idle, busy:
            with anyio.fail_after(20):
                await idle.send(b"once")
                assert await idle.receive() == b"once"
                await keep_busy(busy)  # traffic keeps a connection open past the timeout
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await idle.receive()  # closed by the server meanwhile
                assert server.connections == 1


@pytest.mark.parametrize("scheme", ["unix", "unix+seqpacket", "unix+dgram", "tcp"])
async def test_cli_send_and_recv(scheme: str, tmp_ipc_dir: Path) -> None:
    address = "tcp:127.0.0.1:0" if scheme == "tcp" else f"{scheme}:{tmp_ipc_dir}/cli.sock"
    recv = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aioipc",
        "recv",
        address,
        "--count",
        "2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert recv.stderr is not None
    try:
        with anyio.fail_after(30):
            line = (await recv.stderr.readline()).decode()
            assert line.startswith("receiving at "), line
            bound = line.split()[-1]
            send = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "aioipc", "send", bound, "-", stdin=asyncio.subprocess.PIPE
            )
            await send.communicate(b"first\nsecond\n")
            assert send.returncode == 0
            out, _ = await recv.communicate()
        assert out == b"first\nsecond\n"
        assert recv.returncode == 0
    finally:
        if recv.returncode is None:
            recv.kill()
            await recv.wait()

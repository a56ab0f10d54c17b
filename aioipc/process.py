"""Child processes with a message channel, waited for through a pidfd.

Example: a worker that answers its parent::

    # parent
    async with await aioipc.spawn([sys.executable, "worker.py"]) as proc:
        await proc.channel.send(b"job 1")
        print(await proc.channel.receive())
        await proc.terminate(grace=5)         # SIGTERM, then SIGKILL after 5 s

    # worker.py
    async def main() -> None:
        async with await aioipc.parent_channel() as channel:
            async for job in channel:
                await channel.send(b"done: " + job)

The channel is a framed :class:`~aioipc.MessageStream` over a Unix
socketpair: the child inherits its end at the same fd number, named by the
``AIOIPC_CHANNEL_FD`` environment variable. Waiting uses a pidfd registered
with the event loop: no SIGCHLD handler, no helper thread, no polling, and
signals go through the pidfd, so they never reach a recycled pid.

Caveats:
    Linux 5.4 or newer (``pidfd_open``, ``waitid(P_PIDFD)``). The fork and
    exec happen on the loop's thread (``subprocess.Popen``), which takes
    about a millisecond.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel

from ._core.fdstreams import FdByteStream, FdHandle, FdReceiveStream, FdSendStream
from ._core.framing import DEFAULT_MAX_SIZE
from ._core.streams import FramedStream, framed
from .pipes import PipeReceiveStream, PipeSendStream
from .sockets._base import shutdown_write

__all__ = [
    "CHANNEL_ENV",
    "PIPE",
    "Process",
    "parent_channel",
    "spawn",
    "terminate_all",
    "wait_pid",
]

#: the environment variable that tells a child the fd number of its channel
CHANNEL_ENV = "AIOIPC_CHANNEL_FD"
#: for ``stdin``/``stdout``/``stderr``: a pipe whose parent end is an async stream
PIPE = subprocess.PIPE


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


StdioArg = int | IO[Any] | None


def _channel_stream(fd: int, max_size: int) -> FramedStream:
    """A framed two-way stream over one end of a stream socketpair (owns ``fd``)."""
    handle = FdHandle(fd)
    stream = FdByteStream(FdReceiveStream(handle), FdSendStream(handle), shutdown=shutdown_write)
    return framed(stream, max_size)


class Process(anyio.abc.AsyncResource):
    """A child started by :func:`spawn`.

    ``async with proc:`` closes its streams and terminates it at the end
    (see :meth:`aclose`).

    Attributes:
        pid: the child's process id.
        args: the argv it was started with.
        channel: the :class:`~aioipc.MessageStream` to the child, or ``None``
            when spawned with ``channel=False``.
        stdin, stdout, stderr: async pipe streams where ``PIPE`` was asked, else ``None``.
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        pidfd: int,
        channel: FramedStream | None,
        stdio: tuple[PipeSendStream | None, PipeReceiveStream | None, PipeReceiveStream | None],
    ) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.args = popen.args
        self.channel = channel
        self.stdin, self.stdout, self.stderr = stdio
        self._pidfd = FdHandle(pidfd)
        self._exit_task: asyncio.Task[int] | None = None

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"returncode={self.returncode}"
        return f"<Process pid={self.pid} {state}>"

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (a negative signal number if a signal killed it), else ``None``."""
        return self._popen.returncode

    async def _reap(self) -> int:
        await self._pidfd.wait_readable()
        # Readable pidfd: the child has exited, so this wait returns at once.
        returncode = self._popen.wait()
        self._pidfd.close()
        return returncode

    async def wait(self) -> int:
        """Wait for the child to exit and return its exit status.

        Several tasks may wait at once; cancelling one wait does not affect the others.
        A child killed by a signal gives the negative signal number, as asyncio does.
        """
        if self._popen.returncode is not None:
            await anyio.lowlevel.checkpoint()
            return self._popen.returncode
        if self._exit_task is None:
            self._exit_task = asyncio.get_running_loop().create_task(self._reap())
        return await asyncio.shield(self._exit_task)

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the child through its pidfd; does nothing once it has been reaped."""
        if self._pidfd.closed:
            return
        try:
            signal.pidfd_send_signal(self._pidfd.fd, sig)
        except ProcessLookupError:
            pass  # exited, not reaped yet

    def kill(self) -> None:
        """Send SIGKILL to the child (see :meth:`send_signal`)."""
        self.send_signal(signal.SIGKILL)

    async def terminate(self, grace: float = 5) -> int:
        """Send SIGTERM, wait up to ``grace`` seconds, then SIGKILL; return the exit status.

        Returns at once if the child has exited already. A child that
        ignores SIGTERM gives ``-9`` (``-signal.SIGKILL``).
        """
        if self.returncode is not None:
            await anyio.lowlevel.checkpoint()
            return self.returncode
        self.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                return await self.wait()
        except TimeoutError:
            self.kill()
            return await self.wait()

    async def aclose(self, *, grace: float = 5) -> None:
        """Close the channel and pipes, then :meth:`terminate` the child with ``grace`` (idempotent).

        If this is cancelled, the child is killed and reaped before the cancellation propagates.
        """
        try:
            for stream in (self.channel, self.stdin, self.stdout, self.stderr):
                if stream is not None:
                    await anyio.aclose_forcefully(stream)
            await self.terminate(grace)
        finally:
            if self.returncode is None:
                self.kill()
                self._popen.wait()
            if self._exit_task is not None and not self._exit_task.done():
                self._exit_task.cancel()
            self._pidfd.close()


def _fileno(item: int | _HasFileno) -> int:
    return item if isinstance(item, int) else item.fileno()


async def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    channel: bool = True,
    pass_fds: Iterable[int | _HasFileno] = (),
    max_size: int = DEFAULT_MAX_SIZE,
    stdin: StdioArg = None,
    stdout: StdioArg = None,
    stderr: StdioArg = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    start_new_session: bool = False,
) -> Process:
    """Start ``argv`` as a child process, with a message channel to it.

    Args:
        channel: give the child a framed message channel (``proc.channel``;
            the child opens its end with :func:`parent_channel`).
        pass_fds: more fds (or objects with ``fileno()``, such as pipe ends)
            the child inherits at the same numbers; close your copies after.
        max_size: the largest message on the channel, each way.
        stdin, stdout, stderr: as for ``subprocess.Popen``; ``PIPE`` gives an
            async pipe stream (``proc.stdout`` ...), blocking in the child.
        env: the child's environment (default: ours); the channel variable
            is set for the child's channel, or removed without one.
        start_new_session: the child leads a new session and process group
            (signal the group with ``aioipc.signals.send_group(proc.pid, sig)``).

    Raises:
        FileNotFoundError, PermissionError: the program cannot be executed.
        OSError: out of processes or file descriptors.

    Example::

        proc = await aioipc.spawn([sys.executable, "-m", "myapp.worker"])
        await proc.channel.send(b"hello")
    """
    await anyio.lowlevel.checkpoint()
    return _start(
        argv,
        channel=channel,
        inherited=[_fileno(item) for item in pass_fds],
        max_size=max_size,
        stdio=[stdin, stdout, stderr],
        env=dict(os.environ if env is None else env),
        cwd=cwd,
        start_new_session=start_new_session,
    )


def _start(
    argv: Sequence[str | os.PathLike[str]],
    *,
    channel: bool,
    inherited: list[int],
    max_size: int,
    stdio: list[StdioArg],
    env: dict[str, str],
    cwd: str | os.PathLike[str] | None,
    start_new_session: bool,
) -> Process:
    env.pop(CHANNEL_ENV, None)  # ours, if we have one, is not the child's
    child_fds: list[int] = []
    parent_fds: list[int | None] = [None, None, None, None]  # channel, stdin, stdout, stderr
    try:
        if channel:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            parent_fds[0] = ours.detach()
            child_fds.append(theirs.detach())
            inherited.append(child_fds[-1])
            env[CHANNEL_ENV] = str(child_fds[-1])
        for index, arg in enumerate(stdio):
            if arg == PIPE:
                r, w = os.pipe2(os.O_CLOEXEC)
                child_end, parent_end = (r, w) if index == 0 else (w, r)
                child_fds.append(child_end)
                parent_fds[index + 1] = parent_end
                stdio[index] = child_end
        popen = subprocess.Popen(
            list(argv),
            stdin=stdio[0],
            stdout=stdio[1],
            stderr=stdio[2],
            pass_fds=inherited,
            env=env,
            cwd=cwd,
            start_new_session=start_new_session,
        )
    except BaseException:
        for fd in child_fds + parent_fds:
            if fd is not None:
                os.close(fd)
        raise
    for fd in child_fds:
        os.close(fd)
    try:
        # The child stays a zombie until we reap it: its pid cannot have been reused yet.
        pidfd = os.pidfd_open(popen.pid)
    except BaseException:
        popen.kill()
        popen.wait()
        for fd in parent_fds:
            if fd is not None:
                os.close(fd)
        raise
    channel_fd, stdin_fd, stdout_fd, stderr_fd = parent_fds
    return Process(
        popen,
        pidfd,
        _channel_stream(channel_fd, max_size) if channel_fd is not None else None,
        (
            PipeSendStream(FdHandle(stdin_fd)) if stdin_fd is not None else None,
            PipeReceiveStream(FdHandle(stdout_fd)) if stdout_fd is not None else None,
            PipeReceiveStream(FdHandle(stderr_fd)) if stderr_fd is not None else None,
        ),
    )


async def parent_channel(*, max_size: int = DEFAULT_MAX_SIZE) -> FramedStream:
    """Open, in a child started by :func:`spawn`, the message channel to the parent.

    The environment variable is removed, so the channel is opened once and
    this process's own children do not see it.

    Raises:
        RuntimeError: this process has no channel (not started by
            ``spawn(..., channel=True)``, or the channel was opened already).
        ValueError: the variable does not name an open socket.
    """
    text = os.environ.pop(CHANNEL_ENV, None)
    if text is None:
        raise RuntimeError(
            f"no channel to a parent: {CHANNEL_ENV} is not set (this process was not started by "
            "aioipc.spawn(..., channel=True), or parent_channel() was called already)"
        )
    try:
        fd = int(text)
        mode = os.fstat(fd).st_mode
    except (ValueError, OSError) as exc:
        raise ValueError(f"{CHANNEL_ENV}={text!r} does not name an open fd") from exc
    if not stat.S_ISSOCK(mode):
        raise ValueError(f"{CHANNEL_ENV}={text!r} is not a socket")
    await anyio.lowlevel.checkpoint()
    return _channel_stream(fd, max_size)


async def terminate_all(processes: Iterable[Process], grace: float = 5) -> list[int]:
    """Terminate several children in parallel: SIGTERM to all at once, SIGKILL to those left after ``grace``.

    Returns their exit statuses in order. All of them are reaped: no zombie is left.

    Example::

        statuses = await aioipc.process.terminate_all(workers, grace=10)
    """
    return list(await asyncio.gather(*(proc.terminate(grace) for proc in processes)))


async def wait_pid(pid: int) -> int | None:
    """Wait until process ``pid`` exits, whoever started it (through a pidfd).

    Returns its exit status (negative signal number when killed) if it is a
    child of this process, which is left for its owner to reap; ``None`` for
    any other process, whose status only its parent may know.

    Raises:
        ProcessLookupError: no such process.
        ValueError: ``pid`` is not positive.

    Example::

        await aioipc.process.wait_pid(int(open("/run/app.pid").read()))
    """
    if pid <= 0:
        raise ValueError(f"pid must be positive, not {pid}")
    handle = FdHandle(os.pidfd_open(pid))
    try:
        await handle.wait_readable()
        try:
            # WNOHANG: never blocks; WNOWAIT: leaves the zombie for its owner to reap.
            info = os.waitid(os.P_PIDFD, handle.fd, os.WEXITED | os.WNOWAIT | os.WNOHANG)  # noqa: ASYNC222
        except ChildProcessError:
            return None
    finally:
        handle.close()
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

"""An echo service that systemd starts on its first client (socket activation).

systemd owns the socket: it binds it before the service runs, starts the
service when the first client connects, and hands over the listening socket
(fd 3, with LISTEN_FDS and LISTEN_PID). The socket outlives the service, so
clients that come during a restart wait in the backlog instead of being
refused. The service tells systemd when it is ready (READY=1 with a STATUS=
line) and when it is stopping (STOPPING=1), and answers the watchdog. It
echoes raw bytes, so any client will do (socat, ``nc -U``).

The two units, in /etc/systemd/system/ (then ``systemctl daemon-reload``
and ``systemctl start echo.socket``)::

    # echo.socket
    [Unit]
    Description=aioipc echo socket

    [Socket]
    ListenStream=/run/echo.sock
    SocketMode=0600

    [Install]
    WantedBy=sockets.target

    # echo.service
    [Unit]
    Description=aioipc echo service
    Requires=echo.socket

    [Service]
    Type=notify
    ExecStart=/usr/bin/python3 /opt/echo/socket_activated_echo.py
    WatchdogSec=30

Try it without systemd, with the tool systemd ships for this::

    systemd-socket-activate -l /tmp/echo.sock python examples/socket_activated_echo.py
    echo hello | socat - UNIX-CONNECT:/tmp/echo.sock      # in another shell

Ctrl-C (or ``kill``, as ``systemctl stop`` does) stops it quietly; the
socket file stays, as it belongs to systemd.
"""

from __future__ import annotations

import signal
import sys

import aioipc


async def echo(stream: aioipc.ByteStream) -> None:
    async for chunk in stream:
        await stream.send(chunk)


async def main() -> None:
    async with aioipc.graceful_shutdown(timeout=5, notify=True) as sd:
        try:
            server = await aioipc.serve("sd-listen:", echo, framing=None)
        except ValueError as exc:  # not started by systemd: say how to start it
            sys.exit(str(exc))
        sd.add_hook(server.close, 2)  # at the stop: stop accepting, 2 s for clients to finish
        sd.ready(status=f"echoing on {server.address}")
        print("echoing on", server.address, flush=True)
        await server.serve_forever()
    print("stopped by", signal.Signals(sd.reason).name if sd.reason else "itself")


if __name__ == "__main__":
    aioipc.run(main(), exit_quietly=True)

"""The event bus of ``event_bus.py`` over a NATS server: the same code, a ``nats://`` address.

Give it the server's URL (``nats-server -a 127.0.0.1 -p 4222`` starts one)::

    python examples/event_bus_nats.py nats://127.0.0.1:4222
"""

from __future__ import annotations

from event_bus import main

if __name__ == "__main__":
    main(None)

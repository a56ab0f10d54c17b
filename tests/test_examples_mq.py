"""The message-queue examples, run as a user runs them."""

from __future__ import annotations

import os

import pytest
from helpers import EXAMPLES, run_example

import aioipc.mq
import aioipc.sysv

pytestmark = pytest.mark.usefixtures("example_loop")  # each example runs on both loops


def test_posix_sender_and_receiver(unique_name: str) -> None:
    assert run_example("mq_receiver.py", "--name", "/" + unique_name) == [
        f"receiving on mq:/{unique_name}",
        "received 'hello' (priority 0)",
        "received 'from' (priority 0)",
        "received 'another' (priority 0)",
        "received 'process' (priority 0)",
        "received 'exit' (priority 0)",
        "sender exited with 0",
    ]
    with pytest.raises(FileNotFoundError):
        aioipc.mq.unlink("/" + unique_name)  # the receiver removed its queue


def test_system_v_sender_and_receiver() -> None:
    # proj = our pid's low byte: parallel runs of the suite do not share a key
    proj = str(os.getpid() % 255 + 1)
    key = aioipc.sysv.ftok(EXAMPLES / "sysv_mq_receiver.py", int(proj))
    assert run_example("sysv_mq_receiver.py", "--proj", proj) == [
        f"receiving on sysvmq:{key:#x}",
        "received 'hello' (type 1)",
        "received 'from' (type 1)",
        "received 'another' (type 1)",
        "received 'process' (type 1)",
        "received 'exit' (type 2)",
        "sender exited with 0",
    ]
    assert key not in [q.key for q in aioipc.sysv.list_message_queues()]


def test_work_queue_with_consumer_processes() -> None:
    lines = run_example("work_queue.py", "--jobs", "200", "--processes", "3", "--tasks", "2")
    assert lines[:2] == [
        "200 jobs done once each; consumer processes exited with [0, 0, 0]",
        f"sum of squares = {sum(n * n for n in range(200))} (expected {sum(n * n for n in range(200))})",
    ]

"""aioipc.files: inotify watches on the loop, and write_atomic, against shell tools and other processes."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest
from helpers import run_tool

import aioipc.files
from aioipc.files import Change, ChangeKind


async def sh(script: str, cwd: Path) -> None:
    """Run a shell script in ``cwd``, as a user at a terminal would; it must succeed."""
    await run_tool("sh", "-ec", f"cd {cwd}; {script}")


async def changes_until(watch: aioipc.files.Watch, last: Change) -> list[Change]:
    """Changes up to and including ``last``, consecutive repeats folded (a slow shell splits bursts)."""
    seen: list[Change] = []
    with anyio.fail_after(10):
        while not seen or seen[-1] != last:
            change = await watch.receive()
            if not seen or seen[-1] != change:
                seen.append(change)
    return seen


def inotify_fds() -> int:
    """How many inotify instances this process holds."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += "inotify" in os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            pass  # the fd that listed the directory
    return count


async def test_shell_touch_append_move_and_remove_are_seen(tmp_path: Path) -> None:
    a, b, sub = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "sub")
    async with aioipc.files.watch(tmp_path) as changes:
        await sh("touch a; echo line >> a; mv a b; mkdir sub; rm b; rmdir sub", tmp_path)
        seen = await changes_until(changes, Change(sub, "deleted", is_dir=True))
    assert seen == [
        Change(a, "created"),
        Change(a, "modified"),
        Change(b, "moved", old_path=a),
        Change(sub, "created", is_dir=True),
        Change(b, "deleted"),
        Change(sub, "deleted", is_dir=True),
    ]


async def test_moves_across_the_edge_of_the_watch_are_created_and_deleted(tmp_path: Path) -> None:
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    (outside / "x").write_bytes(b"x")
    async with aioipc.files.watch(inside) as changes:
        await sh("mv out/x in/x; mv in/x out/y", tmp_path)
        seen = await changes_until(changes, Change(str(inside / "x"), "deleted"))
    assert seen == [Change(str(inside / "x"), "created"), Change(str(inside / "x"), "deleted")]


async def test_a_watched_file_is_followed_across_rename_and_replace_saves(tmp_path: Path) -> None:
    conf = str(tmp_path / "conf")
    async with aioipc.files.watch(conf) as changes:  # need not exist yet
        await sh("printf 1 > .conf.swp; mv .conf.swp conf; touch other; echo 2 >> conf", tmp_path)
        seen = await changes_until(changes, Change(conf, "modified"))
        await aioipc.files.write_atomic(conf, b"3")
        seen += await changes_until(changes, Change(conf, "created"))
        await sh("mv conf conf.bak; echo 4 > other", tmp_path)
        seen += await changes_until(changes, Change(conf, "deleted"))
    # Names other than conf are filtered out: the temp names, "other", "conf.bak".
    assert seen == [
        Change(conf, "created"),
        Change(conf, "modified"),
        Change(conf, "created"),
        Change(conf, "deleted"),
    ]
    assert (tmp_path / "conf.bak").read_bytes() == b"3"


async def test_a_recursive_watch_follows_the_tree_as_it_changes(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "outside").mkdir()
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)

    def at(*parts: str, kind: ChangeKind = "created", is_dir: bool = False, old: str | None = None) -> Change:
        return Change(str(root.joinpath(*parts)), kind, old, is_dir)

    async def step(script: str, *expected: Change) -> None:
        await sh(script, tmp_path)
        assert await changes_until(changes, expected[-1]) == list(expected)

    async with aioipc.files.watch(root, kinds={"created", "deleted", "moved"}, recursive=True) as changes:
        await step("touch root/a/b/deep", at("a", "b", "deep"))
        await sh("mkdir -p root/new/sub; touch root/new/sub/f", tmp_path)
        seen = await changes_until(changes, at("new", "sub", "f"))
        # new/sub and new/sub/f were made before their watches were added: a scan reports them
        assert seen[:2] == [at("new", is_dir=True), at("new", "sub", is_dir=True)]
        await sh("touch root/new/sub/g", tmp_path)
        rest = await changes_until(changes, at("new", "sub", "g"))
        assert [c for c in rest if c != at("new", "sub", "f")] == [at("new", "sub", "g")]  # f: maybe twice
        await step("mv root/a root/c", at("c", kind="moved", is_dir=True, old=str(root / "a")))
        await step("touch root/c/b/after", at("c", "b", "after"))  # renamed, still watched
        await step(
            "mv root/c/b outside/b; touch outside/b/gone; touch root/marker",
            at("c", "b", kind="deleted", is_dir=True),  # moved out: what happens there is not seen
            at("marker"),
        )
        await step("mv old root/old", at("old", is_dir=True))
        await step("touch root/old/x; rm root/old/x", at("old", "x"), at("old", "x", kind="deleted"))
    with pytest.raises(NotADirectoryError):
        aioipc.files.watch(root / "marker", recursive=True)


async def test_kinds_asks_the_kernel_only_for_those(tmp_path: Path) -> None:
    async with aioipc.files.watch(tmp_path, kinds={"deleted"}) as changes:
        await sh("touch a; echo x >> a; mv a b; rm b", tmp_path)
        # Without "moved", the rename is "deleted" of a (wanted) and "created" of b (not wanted).
        seen = await changes_until(changes, Change(str(tmp_path / "b"), "deleted"))
    assert seen == [Change(str(tmp_path / "a"), "deleted"), Change(str(tmp_path / "b"), "deleted")]
    with pytest.raises(ValueError, match="unknown change kinds"):
        aioipc.files.watch(tmp_path, kinds={"renamed"})


async def test_the_watch_ends_when_its_directory_is_removed(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    async with aioipc.files.watch(sub) as changes:
        await sh("rmdir sub", tmp_path)
        with anyio.fail_after(10):
            seen = [change async for change in changes]
    assert seen == [Change(str(sub), "deleted", is_dir=True)]


async def test_a_recursive_watch_ends_when_its_tree_is_removed(tmp_path: Path) -> None:
    (tmp_path / "root" / "a" / "b").mkdir(parents=True)
    async with aioipc.files.watch(tmp_path / "root", kinds={"deleted"}, recursive=True) as changes:
        await sh("rm -r root", tmp_path)
        with anyio.fail_after(10):
            seen = [change async for change in changes]
    root = str(tmp_path / "root")
    assert seen == [
        Change(f"{root}/a/b", "deleted", is_dir=True),
        Change(f"{root}/a", "deleted", is_dir=True),
        Change(root, "deleted", is_dir=True),
    ]


async def test_queue_overflow_is_reported(tmp_path: Path) -> None:
    with open("/proc/sys/fs/inotify/max_queued_events") as f:
        limit = int(f.read())
    if limit > 100_000:
        pytest.skip(f"fs.inotify.max_queued_events is {limit}: too many files to overflow it")
    files = [tmp_path / "a", tmp_path / "b"]
    for path in files:
        path.touch()
    async with aioipc.files.watch(tmp_path, kinds={"modified"}) as changes:
        for n in range(limit + 10):  # nobody reads meanwhile; a, b, a, b: the kernel merges no two
            os.utime(files[n % 2])
        with anyio.fail_after(10):
            kinds = [(await changes.receive()).kind for _ in range(limit + 1)]
    assert kinds[:limit] == ["modified"] * limit
    assert kinds[limit] == "overflow"


async def test_an_idle_watch_costs_no_cpu_and_no_thread(tmp_path: Path) -> None:
    threads = threading.active_count()
    async with aioipc.files.watch(tmp_path) as changes:
        cpu = time.process_time()
        with anyio.move_on_after(0.5):
            await changes.receive()
        used = time.process_time() - cpu
        assert threading.active_count() == threads
    assert used < 0.05, f"an idle watch used {used:.3f} s of CPU in 0.5 s"


async def test_closing_removes_the_watch_and_the_fd(tmp_path: Path) -> None:
    before = inotify_fds()
    changes = aioipc.files.watch(tmp_path)
    assert inotify_fds() == before + 1
    waiter = asyncio.ensure_future(changes.receive())
    await asyncio.sleep(0)
    await changes.aclose()
    await changes.aclose()  # idempotent
    with pytest.raises(anyio.ClosedResourceError):
        await waiter
    assert inotify_fds() == before
    assert changes.fileno() == -1


async def test_a_cancelled_receive_loses_no_change(tmp_path: Path) -> None:
    async with aioipc.files.watch(tmp_path) as changes:
        with anyio.move_on_after(0.05):
            await changes.receive()
        await sh("touch a", tmp_path)
        with anyio.fail_after(10):
            assert await changes.receive() == Change(str(tmp_path / "a"), "created")


async def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        aioipc.files.watch(tmp_path / "nowhere" / "file")


async def test_write_atomic_replaces_the_file_with_exact_mode(tmp_path: Path) -> None:
    path = tmp_path / "conf.json"
    path.write_bytes(b"old")
    old_umask = os.umask(0o077)
    try:
        await aioipc.files.write_atomic(path, b"new", mode=0o640)
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    await aioipc.files.write_atomic(str(path), memoryview(b"newer"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["conf.json"]  # no temporary file left


async def test_write_atomic_that_fails_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(IsADirectoryError):
        await aioipc.files.write_atomic(tmp_path / "taken", b"data")
    assert sorted(os.listdir(tmp_path)) == ["taken"]
    with pytest.raises(FileNotFoundError):
        await aioipc.files.write_atomic(tmp_path / "nowhere" / "file", b"data")


READER = """
import sys
path, size, last = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
reads = 0
for _ in range(1_000_000):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        continue
    reads += 1
    if len(data) != size or len(set(data)) != 1:
        print(f"torn: {len(data)} bytes, {len(set(data))} distinct values", flush=True)
        sys.exit(1)
    if data[:1] == last:
        print(f"ok {reads}", flush=True)
        sys.exit(0)
print("the last version never came", flush=True)
sys.exit(1)
"""


async def test_a_reader_process_never_sees_a_torn_write(tmp_path: Path) -> None:
    path, size = tmp_path / "data", 256 * 1024
    await aioipc.files.write_atomic(path, b"a" * size)
    reader = await asyncio.create_subprocess_exec(
        sys.executable, "-c", READER, str(path), str(size), "z", stdout=asyncio.subprocess.PIPE
    )
    with anyio.fail_after(30):
        for version in b"bcdefghijklmnopqrstuvwxy" + b"z":
            await aioipc.files.write_atomic(path, bytes([version]) * size)
        out, _ = await reader.communicate()
    assert reader.returncode == 0, out
    assert out.startswith(b"ok ")

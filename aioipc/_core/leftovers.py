"""What this user's aioipc processes created and a crash could leave behind, for ``aioipc ls``.

FIFOs and Unix socket files live anywhere in the file system, and POSIX
queues can only be listed when ``/dev/mqueue`` is mounted; so whatever
creates one also notes its address here, and forgets it on removal. A
process killed with SIGKILL cannot forget: ``aioipc ls`` then shows the
object and ``aioipc rm ADDRESS`` removes it (and the note).

The notes are small files, one per address, in ``$XDG_RUNTIME_DIR/aioipc``
or, without it, ``/tmp/aioipc-$UID`` (directory 0700, files 0600, owned by
this user: a directory someone else made is not used). Noting is best
effort: it never makes the creation itself fail.
"""

from __future__ import annotations

import hashlib
import os
import stat

__all__ = ["forget", "note", "noted"]


def _directory(create: bool) -> str | None:
    """The notes directory, made if asked; ``None`` when it is missing or not safely ours."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    path = os.path.join(runtime, "aioipc") if runtime else f"/tmp/aioipc-{os.getuid()}"
    try:
        if create:
            os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return path


def _entry(directory: str, address: str) -> str:
    return os.path.join(directory, hashlib.sha256(address.encode()).hexdigest()[:32])


def _address(scheme: str, path: str) -> str:
    return f"{scheme}:{os.path.abspath(path)}"  # a queue's "/name" stays itself


def note(scheme: str, path: str) -> None:
    """Remember that this process created the object at ``scheme:path`` (best effort)."""
    address = _address(scheme, path)
    directory = _directory(create=True)
    if directory is None:
        return
    try:
        fd = os.open(_entry(directory, address), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError:
        return
    try:
        os.write(fd, address.encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def forget(scheme: str, path: str) -> None:
    """The object at ``scheme:path`` was removed: drop its note, if any."""
    address = _address(scheme, path)
    directory = _directory(create=False)
    if directory is not None:
        try:
            os.unlink(_entry(directory, address))
        except OSError:
            pass


def noted() -> list[str]:
    """The addresses noted and not forgotten, sorted; the caller checks which still exist."""
    directory = _directory(create=False)
    if directory is None:
        return []
    addresses = []
    for name in os.listdir(directory):
        try:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            addresses.append(os.read(fd, 4096).decode(errors="replace"))
        except OSError:
            pass
        finally:
            os.close(fd)
    return sorted(addresses)

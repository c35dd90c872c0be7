"""One process at a time per database file: its lock file, who holds it, and what a refused one is told."""

from __future__ import annotations

import contextlib
import fcntl
import os
from enum import StrEnum
from pathlib import Path


class Holder(StrEnum):
    """What holds a database's lock: the one instance that serves it, or a rebuild by replay replacing it."""

    SERVICE = "service"
    REBUILD = "rebuild"


class DatabaseInUse(RuntimeError):
    """The file is held by another process (a serving instance, or a rebuild by replay)."""


def hold_lock(path: Path, service: str, holder: Holder) -> int:
    """Take the lock on `path`'s lock file (`<name>.lock`), exclusively, and return its descriptor (close it
    to release).

    One process at a time has a service's database: the instance that serves it or a rebuild that replaces
    it, whoever started them and wherever they keep their home (two instances writing one file would each
    answer from state the other changes). The holder writes its pid and what it is into the lock file, so
    that whoever is refused can say who holds it. Raises DatabaseInUse instead of waiting."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held_by = _holder(fd)
        os.close(fd)
        raise DatabaseInUse(_in_use(path, service, holder, held_by)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {holder} {service}\n".encode(), 0)
    return fd


def release_lock(fd: int) -> None:
    """Give the lock back; the lock file no longer names a holder."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)


def _holder(fd: int) -> tuple[int, Holder] | None:
    """Who the lock file says holds it; None while the holder has not written yet (or is an older OMS)."""
    try:
        pid, what, *_ = os.pread(fd, 256, 0).decode().split()
        return int(pid), Holder(what)
    except (OSError, UnicodeError, ValueError):
        return None


def _in_use(path: Path, service: str, wanted: Holder, held_by: tuple[int, Holder] | None) -> str:
    pid, holder = held_by if held_by is not None else (None, None)
    who = f" (pid {pid})" if pid is not None else ""
    if holder is Holder.REBUILD:
        if wanted is Holder.REBUILD:
            return f"{path} is being rebuilt by replay already{who}"
        return f"{path} is being rebuilt by replay{who}: start the service when that is done"
    if wanted is Holder.REBUILD:
        return f"{path} is open in a running {service} service{who}: stop it first"
    if holder is Holder.SERVICE:
        return f"{path} is in use by another {service} instance{who}; one instance per database: stop it first"
    return f"{path} is in use by another process; one instance per database: stop it first"

"""OMS_HOME is its owner's alone: folders 0700, files 0600, whoever creates them.

Databases with their WAL, SHM and lock files, the stack's pid files and logs,
the embedded nats-server's store and the NATS credentials hold customers,
payments and stored replies. Two layers keep them private:

- the processes OMS runs keep umask 077 (`keep_private`): a service's own
  process, the process that prepares the stack's home (`oms up`, `oms demo`,
  `oms recover` when it starts nats-server) and the nats-server it starts. So
  whatever they create is private without each call site asking: SQLite's
  -wal and -shm, nats-server's store, a child's log file, a pid file;
- what the kernel creates itself asks for it anyway (`private_dir`, and a
  database file created 0600, whose mode SQLite gives its -wal, -shm and
  -journal), so that a service run inside another program (a test, a
  benchmark) is private whatever that program's umask.

A home an older OMS left readable to others is tightened when the stack
prepares it (`tighten`), as far as OMS's own entries go: OMS_HOME may be a
folder that holds other things too.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

PRIVATE_UMASK = 0o077
OTHERS = stat.S_IRWXG | stat.S_IRWXO


def keep_private() -> None:
    """From now on, this process (and every child it starts) creates files 0600 and folders 0700."""
    os.umask(PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """Create `path` and any missing parent as folders only their owner can enter; an existing one is left
    as it is (it may be anything: the folder of a file someone opened as a database)."""
    missing: list[Path] = []
    folder = path
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            folder.mkdir(mode=0o700)
    return path


def private_file(path: Path) -> Path:
    """Create `path` 0600 when it is missing; take group's and others' access away when it has any."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        mode = os.fstat(fd).st_mode
        if mode & OTHERS:
            os.fchmod(fd, stat.S_IMODE(mode) & ~OTHERS)
    finally:
        os.close(fd)
    return path


def tighten(home: Path, entries: Iterable[Path]) -> None:
    """Make `home` 0700 and take group's and others' access away from `entries` (files, or folders walked
    to the bottom) that an older OMS, or another umask, left open. Symbolic links are not followed."""
    _restrict(home)
    for entry in entries:
        if not entry.exists() or entry.is_symlink():
            continue
        _restrict(entry)
        if entry.is_dir():
            for folder, dirs, files in os.walk(entry):
                for name in (*dirs, *files):
                    _restrict(Path(folder) / name)


def _restrict(path: Path) -> None:
    with contextlib.suppress(OSError):  # gone meanwhile, or not ours to change
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & OTHERS:
            os.chmod(path, stat.S_IMODE(mode) & ~OTHERS)

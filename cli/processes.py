"""The stack's processes on this machine: where their files live, which pid is ours, signals.

    OMS_HOME/           0700, and every file in it 0600 (bus.home)
      data/             the services' databases (bus.db)
      credentials/      the NATS users' passwords, nats.conf: their permissions (bus.auth)
      nats/             JetStream store of the embedded nats-server
      nats.url          the URL it listens on (read by `Settings.resolved_nats_url`)
      pids/<name>.pid   one per process `oms up` started (name: a service or nats-server)
      logs/<name>.log   each process's stdout and stderr, appended

A pid file counts only while its process is alive and is ours: /proc/<pid>/cmdline
must be the service module (or nats-server on this home's store) and, for a
service, /proc/<pid>/environ must carry this OMS_HOME. So a stale pid file or a
recycled pid is never signalled.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bus import auth, home
from bus.settings import Settings

PACKAGES = {"orders": "order_svc", "inventory": "inventory_svc", "payment": "payment_svc"}
NATS_SERVER = "nats-server"
LOG_TAIL_LINES = 25


@dataclass(frozen=True)
class Layout:
    """Where the stack keeps its files; paths are absolute."""

    home: Path
    url_file: Path
    data: Path
    credentials: Path
    nats_config: Path

    @classmethod
    def of(cls, settings: Settings) -> Layout:
        resolved = settings.model_copy(update={"home": settings.home.expanduser().resolve()})
        return cls(
            resolved.home,
            resolved.embedded_url_file,
            resolved.data_dir,
            auth.credentials_dir(resolved),
            auth.config_path(resolved),
        )

    @property
    def nats_store(self) -> Path:
        return self.home / "nats"

    def pid_file(self, name: str) -> Path:
        return self.home / "pids" / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.home / "logs" / f"{name}.log"

    def prepare(self) -> None:
        """Make the home and its folders, private (bus.home): this process keeps umask 077 from here on,
        so the files the stack writes (pid files, logs, nats.url) and the processes it starts are private
        too; what an older OMS left readable to others is tightened."""
        home.keep_private()
        home.private_dir(self.home)
        owned = (self.data, self.credentials, self.nats_config, self.nats_store, self.url_file)
        home.tighten(self.home, (*owned, self.home / "pids", self.home / "logs"))
        for folder in (self.home / "pids", self.home / "logs"):
            home.private_dir(folder)


def proc_text(pid: int, what: str) -> list[str] | None:
    """A NUL-separated /proc file (cmdline, environ) as a list; None where there is no procfs."""
    try:
        raw = Path(f"/proc/{pid}/{what}").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")


def alive(pid: int) -> bool:
    """Running (not a zombie). Reaps the process when it is our own child."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def is_ours(layout: Layout, name: str, pid: int) -> bool:
    """`pid` runs `name` for this home (see the module docstring)."""
    if not alive(pid):
        return False
    cmdline = proc_text(pid, "cmdline")
    if cmdline is None:
        return not Path("/proc").is_dir()  # no procfs to check: trust the pid file
    if name == NATS_SERVER:
        return Path(cmdline[0]).name == NATS_SERVER and str(layout.nats_store) in cmdline
    if is_node(name):  # a node of the home's cluster: its own store under nats/
        return Path(cmdline[0]).name == NATS_SERVER and str(layout.nats_store / name) in cmdline
    if not any(a == "-m" and b == PACKAGES[name] for a, b in itertools.pairwise(cmdline)):
        return False
    environ = proc_text(pid, "environ")
    return environ is None or f"OMS_HOME={layout.home}" in environ


def is_node(name: str) -> bool:
    """`nats-<i>`: a node of an embedded cluster (`cli.cluster`)."""
    return name.startswith("nats-") and name.removeprefix("nats-").isdigit()


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def running_pid(settings: Settings, name: str) -> int | None:
    """The pid of `name` (a service or nats-server) if it is alive and ours."""
    layout = Layout.of(settings)
    pid = read_pid(layout.pid_file(name))
    return pid if pid is not None and is_ours(layout, name, pid) else None


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Defer SIGINT/SIGTERM to the end of the block, so a process is never started without its pid
    file and a cleanup runs to its end. Handlers, not a signal mask: children inherit a mask and would
    then ignore SIGTERM, while handlers reset to the default in a child."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)


def port_busy(host: str, port: int) -> bool:
    """Someone listens on the port. Connections in TIME_WAIT (a stopped service's /metrics after a scrape)
    do not count: the servers bind with SO_REUSEADDR, and so does this check."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def log_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log written since `offset`."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(log is empty)"


def send_signal(pid: int, sig: signal.Signals) -> None:
    """Signal the process group when the process leads one (services and nats-server do)."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """Wait until the processes are gone; returns those still alive at the deadline."""
    deadline = time.monotonic() + timeout_s
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left

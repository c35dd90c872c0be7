"""Least privilege on NATS: one user per service, a `cli` and an `admin` user, each allowed only its subjects.

`oms up` (embedded mode) calls `prepare`: it generates each user's password
once, keeps it in `OMS_HOME/credentials/<user>.json` (mode 0600, folder
0700), and writes `OMS_HOME/nats.conf` (mode 0600) for the nats-server it
starts. `deploy/nats/nats.conf` is the same configuration with the passwords
taken from the environment (`NATS_PASSWORD_<USER>`), for docker compose.

Who may do what (`permissions`):

- a service subscribes to its own request subjects and `chaos.<service>.>`,
  both only in its queue group, to `$SRV.>` (micro PING/INFO/STATS) and to its
  private inbox `_INBOX_<service>.>`; it publishes its own events, the
  JetStream API calls it makes on the event stream (create/update/info,
  the ordered consumers of a rebuild by replay, message get for an order's
  timeline), the subjects it calls (orders: reserve, release, authorize,
  refund), and answers requests through `allow_responses`;
- `cli` places, reads and cancels orders, checks and reads stock, reads a
  payment and the health of each service, asks `$SRV.>` and reads the event
  stream's info; it hears only `_INBOX_cli.>`. It cannot call `payment.*`
  (but `payment.get`), reserve, release or restock stock, `orders.saga.>` or
  `chaos.>`;
- `admin` may do everything (chaos, restock, recover, saga retry/abort, audit).

Which credentials a process uses: `login`.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bus import subjects as s
from bus.connect import inbox_prefix
from bus.settings import SERVICES, Settings

Role = Literal["cli", "admin"]
USERS: tuple[str, ...] = (*SERVICES, "cli", "admin")
PASSWORD_ENV = "NATS_PASSWORD_{user}"  # what deploy/nats/nats.conf reads, e.g. NATS_PASSWORD_ORDERS

# Who calls whom: the participants the order service's saga invokes and compensates.
CALLS: dict[str, tuple[s.Route, ...]] = {
    "orders": (s.INVENTORY_RESERVE, s.INVENTORY_RELEASE, s.PAYMENT_AUTHORIZE, s.PAYMENT_REFUND),
}
# What a client may ask: place, read and cancel orders; check and read stock; read a payment; health.
CLI_ROUTES: tuple[s.Route, ...] = (
    s.ORDERS_PLACE,
    s.ORDERS_GET,
    s.ORDERS_LIST,
    s.ORDERS_CANCEL,
    s.ORDERS_EVENTS,
    s.INVENTORY_CHECK,
    s.INVENTORY_STOCK,
    s.PAYMENT_GET,
    *s.HEALTH.values(),
)


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Permissions:
    """nats-server `permissions`: subjects a user may publish to and subscribe to (`"subject queue"`
    allows a subscription only in that queue group); None allows everything."""

    publish: tuple[str, ...] | None
    subscribe: tuple[str, ...] | None
    allow_responses: bool = True

    def to_conf(self) -> dict[str, Any]:
        if self.publish is None and self.subscribe is None:
            return {}
        return {
            "publish": {"allow": list(self.publish or ())},
            "subscribe": {"allow": list(self.subscribe or ())},
            "allow_responses": self.allow_responses,
        }


def _js_api(stream: str, *calls: str) -> tuple[str, ...]:
    return tuple(f"$JS.API.{call}.{stream}" for call in calls)


def permissions(user: str, stream: str = "OMS_EVENTS") -> Permissions:
    """What `user` may do; the event stream's name is a setting."""
    inbox = f"{inbox_prefix(user)}.>"
    if user == "admin":
        return Permissions(None, None)
    if user == "cli":
        publish = (
            *(route.subject for route in CLI_ROUTES),
            "$SRV.>",
            *_js_api(stream, "STREAM.INFO"),  # `oms status` shows the stream
        )
        return Permissions(publish, (inbox,), allow_responses=False)
    if user not in SERVICES:
        raise ValueError(f"unknown NATS user {user!r}: one of {', '.join(USERS)}")
    publish = (
        f"events.{user}.>",
        *_js_api(stream, "STREAM.CREATE", "STREAM.UPDATE", "STREAM.INFO", "CONSUMER.CREATE"),
        # A rebuild by replay (`--recover`) reads the stream with ordered consumers.
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.API.CONSUMER.DELETE.{stream}.*",
        f"$JS.FC.{stream}.>",
        *(_js_api(stream, "STREAM.MSG.GET") if user == "orders" else ()),  # an order's timeline
        *(route.subject for route in CALLS.get(user, ())),
        f"$SRV.PING.{user}",  # the container health check (`python -m bus.healthcheck`)
    )
    subscribe = (f"{user}.> {user}", f"chaos.{user}.> {user}", "$SRV.>", inbox)
    return Permissions(publish, subscribe)


def _quote(text: str) -> str:
    return json.dumps(text)


def render(passwords: dict[str, str], settings: Settings | None = None, *, store_dir: str | None = None) -> str:
    """A nats-server configuration: JetStream and one user per entry of `passwords` (a literal password,
    or `$NAME` to read it from the environment of nats-server)."""
    stream = settings.stream_name if settings else "OMS_EVENTS"
    lines = [
        "# OMS: least-privilege users for nats-server (generated by bus/auth.py; do not edit by hand).",
        "jetstream {",
        *([f"  store_dir: {_quote(store_dir)}"] if store_dir else []),
        "}",
        "authorization {",
        "  users: [",
    ]
    for user in USERS:
        password = passwords[user]
        value = password if password.startswith("$") else _quote(password)
        lines += ["    {", f"      user: {_quote(user)}", f"      password: {value}"]
        conf = permissions(user, stream).to_conf()
        if conf:
            lines.append("      permissions: {")
            for direction in ("publish", "subscribe"):
                allowed = ", ".join(_quote(subject) for subject in conf[direction]["allow"])
                lines.append(f"        {direction}: {{ allow: [{allowed}] }}")
            lines.append(f"        allow_responses: {str(conf['allow_responses']).lower()}")
            lines.append("      }")
        lines.append("    }")
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def deploy_config() -> str:
    """`deploy/nats/nats.conf`: the same users, passwords from nats-server's environment."""
    return render({user: "$" + PASSWORD_ENV.format(user=user.upper()) for user in USERS}, store_dir="/data")


# -- files under OMS_HOME -------------------------------------------------------


def credentials_dir(settings: Settings) -> Path:
    return settings.home.expanduser().resolve() / "credentials"


def config_path(settings: Settings) -> Path:
    return settings.home.expanduser().resolve() / "nats.conf"


def _write_private(path: Path, text: str) -> None:
    """Write `text` readable by this user only, atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load(settings: Settings, user: str) -> Credentials | None:
    """The generated credentials of `user` under OMS_HOME, if there are any."""
    try:
        body = json.loads((credentials_dir(settings) / f"{user}.json").read_text())
        return Credentials(str(body["user"]), str(body["password"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ensure_credentials(settings: Settings) -> dict[str, Credentials]:
    """Every user's credentials: generated once (random), then reused."""
    folder = credentials_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    found: dict[str, Credentials] = {}
    for user in USERS:
        creds = load(settings, user)
        if creds is None or creds.user != user or not creds.password:
            creds = Credentials(user, secrets.token_urlsafe(24))
            _write_private(folder / f"{user}.json", json.dumps({"user": user, "password": creds.password}) + "\n")
        os.chmod(folder / f"{user}.json", 0o600)
        found[user] = creds
    return found


def prepare(settings: Settings) -> Path:
    """Credentials and `OMS_HOME/nats.conf` for the embedded nats-server; returns the config's path.
    The JetStream store directory is not in it: `bus.natsserver.start` names it on the command line."""
    creds = ensure_credentials(settings)
    path = config_path(settings)
    text = render({user: c.password for user, c in creds.items()}, settings)
    _write_private(path, text)
    return path


def login(settings: Settings, role: str) -> Settings:
    """Settings that connect as `role` (a service name, `cli` or `admin`).

    OMS_NATS_USER, when set, wins (an external server: OMS_NATS_URL; or a deliberate choice). Without
    it, the embedded server's generated credentials of `role` are used when OMS_HOME has them and
    OMS_NATS_URL is not set. Otherwise no user: a server without authorization."""
    if settings.nats_user or settings.nats_url:
        return settings
    creds = load(settings, role)
    if creds is None:
        return settings
    return settings.model_copy(update={"nats_user": creds.user, "nats_password": creds.password})


def main(argv: list[str] | None = None) -> None:
    """`python -m bus.auth conf` prints deploy/nats/nats.conf; `python -m bus.auth env` prints random
    passwords for docker compose's `.env`."""
    what = (argv if argv is not None else sys.argv[1:]) or ["conf"]
    if what[0] == "env":
        for user in USERS:
            print(f"{PASSWORD_ENV.format(user=user.upper())}={secrets.token_urlsafe(24)}")
    elif what[0] == "conf":
        sys.stdout.write(deploy_config())
    else:
        sys.exit("usage: python -m bus.auth [conf|env]")


if __name__ == "__main__":
    main()

"""Credentials of the NATS users: generated once under OMS_HOME, stored hashed in the server's configuration.

`oms up` (embedded mode) calls `prepare`: it generates each user's password
once, keeps it in `OMS_HOME/credentials/<user>.json` (mode 0600, folder 0700)
with its bcrypt hash, and writes `OMS_HOME/nats.conf` (mode 0600) for the
nats-server it starts, holding only the hashes. `deploy/nats/nats.conf` is the
same configuration with the hashes taken from nats-server's environment
(`NATS_PASSWORD_HASH_<USER>`), for docker compose; `python -m bus.auth env`
makes both the passwords (for the services) and their hashes (for the server).

Which accounts and permissions the users have: `bus.accounts`. Which credentials
a process uses: `login`.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt

from bus import natsconf
from bus.accounts import CLI_ROUTES as CLI_ROUTES
from bus.accounts import USERS, Role
from bus.settings import Settings

__all__ = ["CLI_ROUTES", "USERS", "Credentials", "Role", "ensure_credentials", "login", "prepare"]

PASSWORD_ENV = "NATS_PASSWORD_{user}"  # what the services read in compose, e.g. NATS_PASSWORD_ORDERS
HASH_ENV = "NATS_PASSWORD_HASH_{user}"  # what deploy/nats/nats.conf reads, e.g. NATS_PASSWORD_HASH_ORDERS
BCRYPT_COST = 11  # nats-server checks it on every connect: about 0.1 s of its CPU per connection here


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)
    hashed: str = field(default="", repr=False, compare=False)  # bcrypt of the password, for nats.conf


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()


ROUTE_HASH_ENV = "NATS_ROUTE_PASSWORD_HASH"  # the cluster's route password, hashed, for deploy/nats/nats.conf
ROUTE_PASSWORD_ENV = "NATS_ROUTE_PASSWORD"  # ... and in the clear, in the routes each node dials
DEPLOY_NODES = ("nats-1", "nats-2", "nats-3")


def deploy_config() -> str:
    """`deploy/nats/nats.conf`: the same accounts and users, password hashes from nats-server's environment,
    one file for every node of compose's 3-node cluster (its name and its routes from the environment too)."""
    hashes = {user: "$" + HASH_ENV.format(user=user.upper()) for user in USERS}
    cluster = natsconf.Cluster(
        node="$NATS_SERVER_NAME",
        listen="0.0.0.0:6222",
        routes=tuple(f"$NATS_ROUTE_{i}" for i in range(1, len(DEPLOY_NODES) + 1)),
        route_password="$" + ROUTE_HASH_ENV,
    )
    return natsconf.render(hashes, store_dir="/data", sync_always=True, cluster=cluster)


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
        return Credentials(str(body["user"]), str(body["password"]), str(body.get("hash") or ""))
    except (OSError, ValueError, KeyError, TypeError):
        return None


ROUTE_USER = "route"  # what the servers of a cluster present to each other (not a client: no account)


def ensure_credentials(settings: Settings, users: tuple[str, ...] = USERS) -> dict[str, Credentials]:
    """Each user's credentials: generated once (random), then reused, each with its bcrypt hash."""
    folder = credentials_dir(settings)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    found: dict[str, Credentials] = {}
    for user in users:
        creds = load(settings, user)
        if creds is None or creds.user != user or not creds.password:
            creds = Credentials(user, secrets.token_urlsafe(24))
        if not creds.hashed.startswith("$2"):  # the hash is kept so the configuration stays the same
            creds = Credentials(user, creds.password, hash_password(creds.password))
            body = {"user": user, "password": creds.password, "hash": creds.hashed}
            _write_private(folder / f"{user}.json", json.dumps(body) + "\n")
        os.chmod(folder / f"{user}.json", 0o600)
        found[user] = creds
    return found


def route_credentials(settings: Settings) -> Credentials:
    """The route password of this home's embedded cluster."""
    return ensure_credentials(settings, (ROUTE_USER,))[ROUTE_USER]


def prepare(settings: Settings, *, path: Path | None = None, cluster: natsconf.Cluster | None = None) -> Path:
    """Credentials and a configuration for an embedded nats-server (`OMS_HOME/nats.conf`, or `path` for a
    node of a cluster); returns the config's path. The JetStream store directory is not in it:
    `bus.natsserver.start` names it on the command line."""
    creds = ensure_credentials(settings)
    path = path or config_path(settings)
    text = natsconf.render(
        {user: c.hashed for user, c in creds.items()},
        stream=settings.stream_name,
        sync_always=settings.durability == "fsync",
        cluster=cluster,
    )
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
    passwords and their hashes for docker compose's `.env`."""
    what = (argv if argv is not None else sys.argv[1:]) or ["conf"]
    if what[0] == "env":
        for user in USERS:
            password = secrets.token_urlsafe(24)
            print(f"{PASSWORD_ENV.format(user=user.upper())}={password}")
            # nats-server parses a variable's value as configuration: the hash in double quotes is a string
            # (bare, its `$` would start another variable); the single quotes keep compose off the `$` too.
            print(f"""{HASH_ENV.format(user=user.upper())}='"{hash_password(password)}"'""")
        route = secrets.token_urlsafe(24)
        print(f"{ROUTE_PASSWORD_ENV}={route}")
        print(f"""{ROUTE_HASH_ENV}='"{hash_password(route)}"'""")
    elif what[0] == "conf":
        sys.stdout.write(deploy_config())
    else:
        sys.exit("usage: python -m bus.auth [conf|env]")


if __name__ == "__main__":
    main()

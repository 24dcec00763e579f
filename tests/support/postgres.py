"""A throwaway PostgreSQL cluster for tests: initdb in a temporary folder, started on a free port.

The tests never use a PostgreSQL service that happens to run on the machine. The server binaries come
from Debian's `postgresql` package, installed by the tests when missing (tests/support/system_packages.py). PostgreSQL
refuses to run as root, so as root the cluster runs as the `postgres` user.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from servers import free_port
from system_packages import ensure

__all__ = [
    "Cluster",
    "cluster_with",
    "create_database",
    "drop_database",
    "find_bin_dir",
    "shared_cluster",
    "start_cluster",
]


def find_bin_dir() -> Path:
    """The PostgreSQL server binaries (Debian's postgresql package, installed when missing)."""
    return Path(ensure("initdb", "postgresql", "/usr/lib/postgresql/*/bin/initdb")).parent


@dataclass
class Cluster:
    folder: Path
    port: int
    bin_dir: Path
    as_user: list[str]

    @property
    def dsn(self) -> str:
        """Over TCP on loopback."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    @property
    def admin_url(self) -> str:
        """The maintenance database, as a libpq URL (for psycopg.connect)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        """A database of this cluster as the server's SQLAlchemy URL (FLUXRUN_SERVER_DATABASE_URL)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    @property
    def socket_dsn(self) -> str:
        """Over the Unix socket in the cluster's own folder (libpq's default kind of connection)."""
        return f"host={self.folder / 'run'} port={self.port} user=postgres dbname=postgres"

    def stop(self) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin_dir / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.folder, ignore_errors=True)


def start_cluster() -> Cluster:
    bin_dir = find_bin_dir()
    folder = Path(tempfile.mkdtemp(prefix="fluxrun-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres", "postgres")
    (folder / "run").mkdir()
    if as_user:
        shutil.chown(folder / "run", "postgres", "postgres")
    subprocess.run(
        [*as_user, str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        capture_output=True,
        check=True,
    )
    port = free_port()
    options = f"-p {port} -k {folder / 'run'} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [
            *as_user,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(folder / "data"),
            "-o",
            options,
            "-l",
            str(folder / "log"),
            "-w",
            "start",
        ],
        capture_output=True,
        check=True,
    )
    cluster = Cluster(folder, port, bin_dir, as_user)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return cluster
        time.sleep(0.1)
    cluster.stop()
    raise RuntimeError(f"the throwaway PostgreSQL on port {port} did not start; see {folder / 'log'}")


@contextmanager
def cluster_with(schema: str) -> Iterator[Cluster]:
    """A throwaway cluster with `schema` run in it, stopped and removed afterwards."""
    import psycopg

    cluster = start_cluster()
    try:
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            conn.execute(schema)
        yield cluster
    finally:
        cluster.stop()


_shared: Cluster | None = None


def shared_cluster() -> Cluster:
    """One throwaway cluster per test process (each xdist worker has its own), started on first use and
    stopped when the process exits. Tests that need a database of their own create one in it."""
    global _shared
    if _shared is None:
        _shared = start_cluster()
        atexit.register(_shared.stop)
    return _shared


def create_database(prefix: str = "fluxrun_test") -> str:
    """A fresh, empty database in the shared cluster, as the server's SQLAlchemy URL."""
    import psycopg

    cluster = shared_cluster()
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(cluster.admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return cluster.database_url(name)


def drop_database(url: str) -> None:
    """Drop a database made by `create_database` (connections still open to it are closed)."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(shared_cluster().admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

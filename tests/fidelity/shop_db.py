"""The shop database of the PostgreSQL scenarios: items (one without a price), checkouts, and a trigger counting
every row written to them, on a throwaway cluster (tests/support/postgres.py) that a scenario stops and starts."""

from __future__ import annotations

import subprocess
from contextlib import AbstractContextManager

from postgres import Cluster, cluster_with

SCHEMA = """
CREATE TABLE items (id serial PRIMARY KEY, customer text NOT NULL, sku text NOT NULL, price numeric(10, 2));
CREATE TABLE checkouts (id serial PRIMARY KEY, customer text NOT NULL, status text NOT NULL);
CREATE TABLE writes (n bigint NOT NULL);
INSERT INTO items (customer, sku, price) VALUES
    ('c-1', 'mug', 12.50), ('c-1', 'tea', 4.20),
    ('c-7', 'mug', 12.50), ('c-7', 'gift-wrap', NULL);  -- added by another system: no price
INSERT INTO writes VALUES (0);
CREATE FUNCTION count_write() RETURNS trigger AS $$ BEGIN UPDATE writes SET n = n + 1; RETURN NULL; END $$
    LANGUAGE plpgsql;
CREATE TRIGGER items_writes AFTER INSERT OR UPDATE OR DELETE ON items FOR EACH ROW EXECUTE FUNCTION count_write();
CREATE TRIGGER checkouts_writes AFTER INSERT OR UPDATE OR DELETE ON checkouts
    FOR EACH ROW EXECUTE FUNCTION count_write();
"""


def writes(cluster: Cluster) -> int:
    """Rows written to the app's tables so far, counted by the triggers."""
    import psycopg

    with psycopg.connect(cluster.dsn) as conn:
        return int(conn.execute("SELECT n FROM writes").fetchone()[0])  # type: ignore[index]


def pg_ctl(cluster: Cluster, *args: str) -> None:
    """Stop or start the cluster keeping its data (Cluster.stop also removes its folder)."""
    command = [*cluster.as_user, str(cluster.bin_dir / "pg_ctl"), "-D", str(cluster.folder / "data"), *args]
    subprocess.run(command, capture_output=True, check=True)


def restart(cluster: Cluster) -> None:
    options = f"-p {cluster.port} -k {cluster.folder / 'run'} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl(cluster, "-o", options, "-l", str(cluster.folder / "log"), "-w", "start")


def shop_cluster() -> AbstractContextManager[Cluster]:
    """A throwaway cluster holding the shop's tables, removed afterwards."""
    return cluster_with(SCHEMA)

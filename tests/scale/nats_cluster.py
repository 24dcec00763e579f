"""Real nats-server processes with JetStream on loopback ports (Debian's `nats-server`, installed when missing):
one server, or a cluster of three whose routes name each other. A node can be killed with SIGKILL and started
again on the same store directory."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
from servers import free_port
from system_packages import ensure

__all__ = ["NatsCluster"]


@dataclass
class _Node:
    name: str
    port: int
    monitor: int
    cluster_port: int
    store: Path
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None


@dataclass
class NatsCluster:
    size: int = 3
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fluxrun-nats-")))
    nodes: list[_Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.binary = ensure("nats-server", "nats-server")
        for i in range(self.size):
            store = self.folder / f"n{i}"
            store.mkdir(parents=True, exist_ok=True)
            self.nodes.append(_Node(f"n{i}", free_port(), free_port(), free_port(), store))

    @property
    def url(self) -> str:
        """FLUXRUN_SERVER_LOG_URL naming every node."""
        return "nats://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, timeout: float = 60.0) -> None:
        """Every node started and JetStream ready; if not, every node stopped again and their logs in the error."""
        try:
            for node in self.nodes:
                self.start_node(node)
            self.wait_ready(timeout)
        except Exception as error:
            logs = self.logs()
            self.stop()
            raise RuntimeError(f"{error}; the nodes' logs:\n{logs}") from error

    def start_node(self, node: _Node) -> None:
        command = [self.binary, "-js", "-sd", str(node.store), "-a", "127.0.0.1", "-p", str(node.port)]
        command += ["-m", str(node.monitor), "-n", node.name]
        if self.size > 1:
            routes = ",".join(f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes)
            command += ["--cluster_name", "fr", "--cluster", f"nats://127.0.0.1:{node.cluster_port}"]
            command += ["--routes", routes]
        if node.log is None:
            node.log = (self.folder / f"{node.name}.log").open("ab")
        node.proc = subprocess.Popen(command, stdout=node.log, stderr=subprocess.STDOUT)

    def logs(self, tail: int = 4000) -> str:
        """The end of every node's log, for an error message."""
        parts = []
        for node in self.nodes:
            path = self.folder / f"{node.name}.log"
            text = path.read_bytes()[-tail:].decode(errors="replace") if path.exists() else "(no log)"
            parts.append(f"--- {node.name} (exit {node.proc.poll() if node.proc else None}):\n{text}")
        return "\n".join(parts)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Every running node answers, and JetStream has a meta leader over the whole cluster."""
        deadline = time.monotonic() + timeout
        while True:
            exited = [n.name for n in self.nodes if n.proc is not None and n.proc.poll() is not None]
            if exited:
                raise RuntimeError(f"nats-server {', '.join(exited)} exited")
            if all(self._jetstream_ready(n) for n in self.nodes if n.proc is not None):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"NATS did not become ready within {timeout} s")
            time.sleep(0.1)

    def _jetstream_ready(self, node: _Node) -> bool:
        try:
            info = httpx.get(f"http://127.0.0.1:{node.monitor}/jsz", timeout=1).json()
        except (httpx.HTTPError, ValueError):
            return False
        if self.size == 1:
            return bool(info.get("config"))
        meta = info.get("meta_cluster") or {}
        return bool(meta.get("leader")) and int(meta.get("cluster_size", 0)) >= self.size

    def kill(self, index: int) -> None:
        node = self.nodes[index]
        if node.proc is not None:
            node.proc.kill()
            node.proc.wait()
            node.proc = None

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
                node.proc = None
            if node.log is not None:
                node.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)

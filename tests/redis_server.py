"""A real `redis-server` for tests: on a free loopback port, stoppable and restartable with its data.

Used by the `redis_server` fixture (tests/conftest.py): the online-store parity suite and the serving
fault tests run against it. `.ci/run` installs redis-server from Debian.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

REDIS = shutil.which("redis-server")


class RedisServer:
    """`redis-server` on a fixed loopback port and data directory, so a restart is the same server.

    Started without automatic snapshots; :meth:`save` writes `dump.rdb` (as a
    production Redis with persistence would have), which a restarted server
    loads, so its data survives a kill.
    """

    def __init__(self, exe: str, port: int, data_dir: Path):
        self.exe, self.port, self.dir = exe, port, data_dir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"redis-server did not start on port {self.port}")
                time.sleep(0.05)

    def ensure_running(self) -> None:
        if not self.running:
            self.start()

    def save(self) -> None:
        import redis

        redis.Redis(host="127.0.0.1", port=self.port).save()

    def kill(self) -> None:
        """SIGKILL: no shutdown save, connections dropped mid-flight."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_redis(data_dir: Path) -> RedisServer:
    """Start a server on a free loopback port; skip (locally) or fail (in CI) when redis-server is missing."""
    from serving.server import free_port

    if REDIS is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        pytest.skip("redis-server is not installed")
    server = RedisServer(REDIS, free_port(), data_dir)
    server.start()
    return server

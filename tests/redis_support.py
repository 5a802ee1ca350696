"""A real `redis-server` (Debian's) on a free loopback port for the tests, stopped whatever happens.

Tests that need it use the `redis_server` fixture (tests/conftest.py); without the binary they skip with the
command that installs it (`.ci/run` installs it, as it does chromium).
"""

import shutil
import subprocess
import tempfile
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from server_support import free_port, stop_process_group


class RedisServer:
    """One `redis-server` process: no persistence, debug commands on (for `DEBUG SLEEP`), its own folder."""

    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._folder = tempfile.mkdtemp(prefix="hhc-redis-")
        self.process = None
        self.start()

    def start(self) -> None:
        """Start (or restart, on the same port) and wait until it answers."""
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self._folder, "--enable-debug-command", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        client = self.client()
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                time.sleep(0.025)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def client(self, timeout_s: float = 10) -> redis.Redis:
        """A client for the test's own commands (faults, inspection), without retries."""
        return redis.Redis(port=self.port, socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0))

    def kill(self) -> None:
        """SIGKILL: the server is gone at once, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process, timeout=5)
        shutil.rmtree(self._folder, ignore_errors=True)


def redis_server_or_skip():
    if shutil.which("redis-server") is None:
        pytest.skip("needs Debian's redis-server (apt-get install redis-server)")
    return RedisServer()

"""Starts `demo/app.py` once per test session on a free loopback port, and always stops it.

Small settings (8 new tokens, 16-token blocks, the test-sized tiny model) keep the runs short.
"""

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from server_support import free_port, stop_process_group

REPO_ROOT = Path(__file__).resolve().parents[2]
# demo/ is not installed with the package: the in-process tests import it from the checkout.
sys.path.insert(0, str(REPO_ROOT))
# Importing torch, transformers and gradio on a busy 2-core machine can take a minute.
STARTUP_TIMEOUT_S = 240


def _wait_until_serving(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"demo/app.py exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"demo/app.py did not serve {url} within {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()}")


@pytest.fixture(scope="session")
def demo_url(tmp_path_factory) -> str:
    """URL of a running demo; the process is killed when the session ends, whatever happened."""
    pytest.importorskip("gradio", reason="the demo needs the [demo] extra: pip install -e '.[demo]'")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log_path = tmp_path_factory.mktemp("demo") / "app.log"
    command = [sys.executable, "demo/app.py", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--max-new-tokens", "8", "--block-size", "16", "--tiny-size", "test"]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_until_serving(url, process, log_path)
        yield url
    finally:
        # Its own process group: gradio's worker threads and any child go with it.
        stop_process_group(process, timeout=15)

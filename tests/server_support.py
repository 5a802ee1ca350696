"""Helpers for tests that run a server in a child process (the demo, `python -m hf_hybrid_cache.serve`)."""

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a child started with `start_new_session=True` and everything it spawned (gradio's and uvicorn's
    workers): SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def start(command: list[str], port: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("TRITON_INTERPRET", None)
    log = open(log_path, "w")
    return subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)


def wait_until_up(process: subprocess.Popen, port: int, log_path: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"server on port {port} did not come up:\n{log_path.read_text()[-3000:]}")


@contextlib.contextmanager
def running_servers(commands: list[list[str]], log_dir: Path, prefix: str):
    """Start every command on a free port at once, wait until all are up, yield their ports; stop them all
    whatever happens."""
    ports = [free_port() for _ in commands]
    logs = [log_dir / f"{prefix}-{i}.log" for i in range(len(commands))]
    processes = []
    try:
        for command, port, log in zip(commands, ports, logs):
            processes.append(start(command, port, log))
        for process, port, log in zip(processes, ports, logs):
            wait_until_up(process, port, log)
        yield ports
    finally:
        for process in processes:
            stop_process_group(process)

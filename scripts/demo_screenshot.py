"""Regenerates docs/demo.png: the demo with its defaults, three chats of three turns with the default system
prompt (cache on, cache off, cache on again), in headless Chromium. Prints each turn's figures.

    .venv/bin/python scripts/demo_screenshot.py

Needs the [test] extra and Debian's chromium (as `tests/demo/` does); nothing leaves the machine.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
TURN_STATS = re.compile(r"\[prompt (\d+) · cached (\d+) · computed (\d+) · TTFT (\d+) ms")
QUESTIONS = ["What is a prefix cache?", "Why keep the recurrent states too?", "What does a hit cost?"]


def main() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "demo/app.py", "--port", str(port)], cwd=ROOT, start_new_session=True,
                              env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        for _ in range(480):  # building the model and importing gradio take a while on 2 cores
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(300_000)
            page.goto(f"http://127.0.0.1:{port}/")
            for chat, cache_on in enumerate((True, False, True), start=1):
                if chat > 1:
                    page.locator("#new-chat").click()
                checkbox = page.locator("#prefix-cache input")
                if checkbox.is_checked() != cache_on:
                    checkbox.click()
                for question in QUESTIONS:
                    lines = page.locator("#chat").get_by_text(TURN_STATS)
                    num_before = lines.count()
                    page.locator("#message textarea").fill(question)
                    page.locator("#message textarea").press("Enter")
                    lines.nth(num_before).wait_for()
                    print(f"chat {chat} (cache {'on' if cache_on else 'off'}):", TURN_STATS.search(lines.nth(num_before).inner_text()).group(0))
            page.wait_for_timeout(2500)  # the store panel refreshes every 2 s
            page.screenshot(path=str(ROOT / "docs" / "demo.png"), full_page=True)
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()

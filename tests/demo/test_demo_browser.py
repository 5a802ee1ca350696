"""The chat page in headless Chromium (Debian's, driven by Playwright; no browser download).

Two turns in one tab: the second reuses the first's prefix. A second tab (its own session) with the
same system prompt then hits the store the first tab filled, and a mode change made there reaches the
first tab's store panel. Saves a screenshot to artifacts/demo.png.
"""

import re
import shutil
import uuid
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="needs the [test] extra")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Nothing may reach the network: no updater, no sync, no QUIC probes.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SCREENSHOT = Path(__file__).resolve().parents[2] / "artifacts" / "demo.png"
# A reply on a busy 2-core machine can take tens of seconds; waits are bounded, never slept.
TURN_TIMEOUT_MS = 150_000
TURN_STATS = re.compile(r"prompt (\d+) · cached (\d+) · computed (\d+)")

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _open_chat(browser, url: str, system_prompt: str):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(TURN_TIMEOUT_MS)
    page.goto(url)
    page.locator("#system-prompt textarea").fill(system_prompt)
    return page


def _send(page, text: str) -> dict:
    """Send one message and return the prompt/cached/computed counts shown under its reply."""
    stats_lines = page.locator("#chat").get_by_text(TURN_STATS)
    num_before = stats_lines.count()
    page.locator("#message textarea").fill(text)
    page.locator("#message textarea").press("Enter")
    stats_lines.nth(num_before).wait_for()
    prompt, cached, computed = map(int, TURN_STATS.search(stats_lines.nth(num_before).inner_text()).groups())
    return dict(prompt=prompt, cached=cached, computed=computed)


def test_second_turn_and_a_second_tab_hit_the_store(browser, demo_url):
    # Unique per run, so the first turn cannot hit what another test stored.
    system_prompt = f"[{uuid.uuid4().hex}] You are a terse assistant. Answer in one short sentence."
    page = _open_chat(browser, demo_url, system_prompt)

    first = _send(page, "What is a prefix cache?")
    second = _send(page, "Why keep the states of the linear-attention layers?")

    assert first["cached"] == 0 and first["computed"] == first["prompt"]
    assert 0 < second["cached"] < second["prompt"]
    assert second["cached"] + second["computed"] == second["prompt"]
    store = page.locator("#store").inner_text()
    assert re.search(r"hit rate\s+\d+%", store), store
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    other_tab = _open_chat(browser, demo_url, system_prompt)
    assert _send(other_tab, "Something else entirely?")["cached"] > 0

    # The mode belongs to the shared store: changing it starts an empty one, and every tab's panel says so.
    other_tab.locator("#mode").get_by_label("align").check()
    sync_api.expect(page.locator("#store")).to_contain_text("align / 16 tokens", timeout=30_000)
    sync_api.expect(page.locator("#store")).to_contain_text("no queries yet")
    # Back to the app's mode, which the other tests of this session rely on.
    other_tab.locator("#mode").get_by_label("all").check()
    sync_api.expect(page.locator("#store")).to_contain_text("all / 16 tokens", timeout=30_000)


MARKUP = "a < b <? c & d <!-- e"  # what a browser reads as a tag, a processing instruction, an entity, a comment


def test_messages_and_replies_show_as_text_with_their_figures_line(browser, demo_url):
    """Markup in a message shows verbatim, and the reply after it shows exactly the model's text (greedy, fixed
    seed, computed here in process on the same tiny model) followed by its figures line."""
    from demo.engine import ChatEngine
    from demo.loader import load_model

    system_prompt = f"[{uuid.uuid4().hex}] Repeat: {MARKUP}"
    page = _open_chat(browser, demo_url, system_prompt)
    _send(page, MARKUP)
    sync_api.expect(page.locator("#chat").get_by_text(MARKUP, exact=True)).to_have_count(1)

    engine = ChatEngine(load_model(tiny_size="test"), max_bytes=64 << 20)
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": MARKUP}]
    *_, (reply, _) = engine.stream(engine.chat_prompt_ids(messages), max_new_tokens=8, prefix_cache=False)
    shown = page.locator("#chat").get_by_text(TURN_STATS).last.inner_text()
    words = " ".join(shown.split())
    assert words.startswith(" ".join(reply.split())), (reply, shown)
    assert TURN_STATS.search(words)

"""The `/generate` contract, through gradio_client against the running demo."""

import re
import uuid
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client", reason="needs the [test] extra")


def _shared_prefix() -> str:
    # Unique per run, so the first call cannot hit anything an earlier test stored.
    return f"[{uuid.uuid4().hex}] " + "A prefix cache serves the repeated start of a prompt. " * 4


def test_second_call_with_a_shared_prefix_hits_the_store(demo_url):
    client = gradio_client.Client(demo_url, verbose=False)
    prefix = _shared_prefix()
    first_text, first = client.predict(prefix + "First question?", 4, api_name="/generate")
    second_text, second = client.predict(prefix + "Second question?", 4, api_name="/generate")

    assert isinstance(first_text, str) and isinstance(second_text, str)
    for stats in (first, second):
        assert {"cached_tokens", "computed_tokens", "ttft_s"} <= stats.keys()
        assert stats["cached_tokens"] + stats["computed_tokens"] == stats["prompt_tokens"]
        assert stats["ttft_s"] > 0 and 1 <= stats["new_tokens"] <= 4
    assert first["cached_tokens"] == 0
    assert 0 < second["cached_tokens"] < second["prompt_tokens"]


def test_invalid_request_is_an_error(demo_url):
    client = gradio_client.Client(demo_url, verbose=False)
    with pytest.raises(gradio_client.exceptions.AppError):
        client.predict("", 4, api_name="/generate")


def test_concurrent_calls_all_complete_and_share_the_store(demo_url):
    # Requests queue for the one model; whichever runs first fills the store for the others.
    client = gradio_client.Client(demo_url, verbose=False)
    prefix = _shared_prefix()
    jobs = [client.submit(f"{prefix}Question {i}?", 2, api_name="/generate") for i in range(3)]
    results = [job.result(timeout=300) for job in jobs]
    cached = sorted(stats["cached_tokens"] for _, stats in results)
    assert cached[0] == 0 and cached[1] > 0 and cached[2] > 0


def _readme_client_snippet() -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    demo_section = readme.split("## Demo", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", demo_section, re.S)
    (snippet,) = [block for block in blocks if "gradio_client" in block]
    return snippet


def test_readme_client_snippet_runs(demo_url, capsys):
    snippet = _readme_client_snippet()
    assert "http://127.0.0.1:7860/" in snippet
    exec(snippet.replace("http://127.0.0.1:7860/", demo_url), {})
    second_call = capsys.readouterr().out.splitlines()[-1].split()
    assert int(second_call[0]) > 0  # its cached_tokens

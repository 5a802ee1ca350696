"""Every Python example in README.md runs, and prints what the README says it prints."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_usage_example_runs_and_hits():
    blocks = python_blocks()
    assert blocks, "README.md has no python example"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(blocks[0], "README.md", "exec"), {})
    lines = printed.getvalue().split()
    assert lines[:2] == ["0", "192"]
    hit_tokens, bytes_used = int(lines[2]), int(lines[3])
    assert hit_tokens == 192 and 0 < bytes_used <= 256 << 20


def test_pipeline_example_runs_and_hits():
    block = next(block for block in python_blocks() if "pipeline(" in block)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block, "README.md", "exec"), {})
    first, second = map(int, printed.getvalue().split())
    assert first == 0 and second > 0


def test_save_and_load_example_runs(tmp_path, monkeypatch):
    blocks = python_blocks()
    block = next(block for block in blocks if "PrefixStore.load(" in block)
    monkeypatch.chdir(tmp_path)  # the example saves to a relative path
    namespace = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(blocks[0], "README.md", "exec"), namespace)  # the usage example fills `store`
    blocks_before = namespace["store"].stats()["blocks"]
    exec(compile(block, "README.md", "exec"), namespace)
    assert (tmp_path / "prefixes.safetensors").exists()
    assert namespace["store"].stats()["blocks"] == blocks_before > 0 and namespace["store"].max_bytes == 64 << 20


def test_continuous_batching_example_runs():
    block = next(block for block in python_blocks() if "generate_batch(" in block)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block, "README.md", "exec"), {})
    assert printed.getvalue().split("\n")[0] == "[8, 8, 8, 8]"


# Blocks other tests run against a live server or with a first block's namespace (see each test).
RUN_ELSEWHERE = {
    "OpenAI(": "tests/serving/test_serve.py::test_readme_client_snippet_runs",
    "PrefixStore.load(": "test_save_and_load_example_runs",
    "prompt_lookup_num_tokens": "tests/models/test_assisted.py::test_readme_example_runs (transformers 5.25)",
}
RUN_HERE = ("hf_hybrid_cache.tiny import tiny_model       #", "pipeline(", "generate_batch(")


def blocks_run_as_written() -> list[str]:
    """Every python block that neither says what it needs (a first line `# Needs ...`) nor is run elsewhere."""
    return [block for block in python_blocks()
            if not block.startswith("# Needs") and not any(key in block for key in RUN_ELSEWHERE)
            and not any(key in block for key in RUN_HERE)]


def test_every_python_block_is_run_or_says_what_it_needs():
    """The blocks other tests run are each found (a README edit cannot drop one out of every test), and a block
    that cannot run here says what it needs on its first line."""
    blocks = python_blocks()
    for key in (*RUN_ELSEWHERE, *RUN_HERE):
        assert sum(key in block for block in blocks) == 1, f"README.md should have one python block with {key!r}"
    for block in blocks:
        if block.startswith("# Needs"):
            assert len(block.split("\n")[0].split()) > 3, block.split("\n")[0]
    assert len(blocks_run_as_written()) >= 2  # the GRPO and offline lm-eval examples at least


def test_the_other_python_blocks_run_as_written_and_print_true(monkeypatch, tmp_path):
    """Each block in a fresh namespace, as a reader pastes it; what it prints ends with True (its check)."""
    monkeypatch.chdir(tmp_path)
    for block in blocks_run_as_written():
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(block, "README.md", "exec"), {})
        assert printed.getvalue().split()[-1:] == ["True"], (block[:200], printed.getvalue())

"""`python -m hf_hybrid_cache.check MODEL`: exact on two tiny families saved to a folder (one-pass Qwen3.5,
generic-path Nemotron-H), in a process of its own as a user runs it; and a cache that restores a wrong state is
caught (non-zero exit, the mismatch named)."""

import subprocess
import sys

import pytest

from hf_hybrid_cache import check
from hf_hybrid_cache.cache import HybridPrefixCache
from hf_hybrid_cache.tiny import tiny_model


@pytest.fixture(scope="module", params=["qwen3_5", "nemotron_h"])
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    tiny_model(request.param, seed=0).save_pretrained(path)
    return path


def test_check_finds_a_tiny_family_exact_in_every_mode(checkpoint):
    result = subprocess.run([sys.executable, "-m", "hf_hybrid_cache.check", str(checkpoint), "--block-size", "16"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "verdict: exact in every mode" in out
    for mode in ("none", "align", "branch", "all"):
        assert f"mode {mode}: exact" in out
    # Hits were served (a repeat and the chat's next turn at least), and reported per prompt.
    next_turn_hits = [int(line.split()[-3]) for line in out.splitlines() if "next turn of question 1" in line]
    assert len(next_turn_hits) == 4 and next_turn_hits[0] == 0 and all(hits > 0 for hits in next_turn_hits[1:])


def test_check_fails_on_a_cache_that_restores_a_wrong_state(monkeypatch, tmp_path, capsys):
    """A fault injected into restore (recurrent states off by a little): the check says so and exits 1."""
    restore = HybridPrefixCache._restore

    def wrong_restore(self, hit):
        restore(self, hit)
        for spec in self.layout.recurrent:
            self.layers[spec.layer_idx].recurrent_states[0].add_(0.05)

    monkeypatch.setattr(HybridPrefixCache, "_restore", wrong_restore)
    tiny_model("qwen3_5", seed=0).save_pretrained(tmp_path)
    assert check.main([str(tmp_path), "--block-size", "16", "--modes", "align"]) == 1
    out = capsys.readouterr().out
    assert "mode align: " in out and "first-step logits differ" in out and "verdict: MISMATCH" in out

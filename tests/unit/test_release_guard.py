"""The tested transformers range: `patch()` refuses any other release (a later one, a dev build, an older one),
names the installed release, the range and the opt-in, and with the opt-in warns once."""

import warnings

import pytest
from packaging.version import Version

import hf_hybrid_cache as hhc
from hf_hybrid_cache import seams
from hf_hybrid_cache.tiny import tiny_qwen3_next


def test_the_installed_release_is_tested():
    assert not seams.untested_release(), f"the suite runs on transformers {seams.INSTALLED}, outside {seams.TESTED_RELEASES}"


@pytest.mark.parametrize("release", ["5.24.0", "5.24.3", "5.25.0", "5.25.1"])
def test_releases_in_the_range_are_tested(release):
    assert not seams.untested_release(Version(release))


@pytest.mark.parametrize("release", ["5.23.2", "5.26.0", "5.26.0.dev0", "5.25.0.dev0", "5.25.0rc1", "6.0.0"])
def test_releases_outside_the_range_are_untested(release):
    assert seams.untested_release(Version(release))


@pytest.fixture
def untested(monkeypatch):
    """transformers 5.26.0 as if it were installed (as with `pip install --no-deps`)."""
    monkeypatch.setattr(seams, "INSTALLED", Version("5.26.0"))
    monkeypatch.setattr(seams, "_warned_untested", False)
    monkeypatch.delenv(seams.ALLOW_UNTESTED_ENV, raising=False)
    return tiny_qwen3_next(seed=0)


def test_patch_refuses_an_untested_release_naming_it_the_range_and_the_opt_in(untested):
    with pytest.raises(RuntimeError) as refusal:
        hhc.patch(untested)
    message = str(refusal.value)
    for part in ("transformers 5.26.0 is installed", ">=5.24,<5.26", "allow_untested_transformers=True", seams.ALLOW_UNTESTED_ENV):
        assert part in message
    assert not getattr(untested, "_hf_hybrid_cache_patched", False)


@pytest.mark.parametrize("opt_in", ["argument", "environment"])
def test_opting_in_patches_with_one_warning(untested, monkeypatch, opt_in):
    kwargs = {"allow_untested_transformers": True} if opt_in == "argument" else {}
    if opt_in == "environment":
        monkeypatch.setenv(seams.ALLOW_UNTESTED_ENV, "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hhc.patch(untested, **kwargs)
        hhc.patch(tiny_qwen3_next(seed=1), **kwargs)
    messages = [str(w.message) for w in caught if "transformers 5.26.0" in str(w.message)]
    assert len(messages) == 1 and ">=5.24,<5.26" in messages[0]
    assert untested._hf_hybrid_cache_patched


def test_the_environment_variable_set_to_0_does_not_opt_in(untested, monkeypatch):
    monkeypatch.setenv(seams.ALLOW_UNTESTED_ENV, "0")
    with pytest.raises(RuntimeError, match="is installed"):
        hhc.patch(untested)


def test_pyproject_names_the_same_range_everywhere():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    low, high = seams.TESTED_RELEASES
    specs = [spec for spec in project["dependencies"] + sum(project["optional-dependencies"].values(), [])
             if spec.startswith("transformers")]
    assert specs and all(spec.endswith(f">={low},<{high}") for spec in specs), specs

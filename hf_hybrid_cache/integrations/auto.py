"""Auto mode: `generate()` calls that pass no cache run on a `HybridPrefixCache` by themselves, so code that
never builds a cache (pipelines, chat loops, `transformers serve`) reuses prompt prefixes too.

Batches, samples and beams are served too (`batch.py`). A request prefix caching cannot serve (assisted
decoding but on one-pass models with transformers 5.25, another cache implementation, `use_cache=False`, a
batch padded on the right) runs exactly as unpatched generate. How many prompt tokens a request was served from the store (all rows together) is kept
per input tensor (`cached_tokens`), for callers that report it.
"""

import weakref

import torch

from .. import seams
from ..store.prefix_store import PrefixStore

# id of an auto-mode request's input_ids tensor -> (a weak reference to it, prompt tokens served from the
# store). Keyed by id: tensors compare elementwise, so they cannot be dictionary keys themselves; an entry
# goes when its tensor does, and no cache is kept alive.
_served: dict[int, tuple[weakref.ref, int]] = {}


def configure(model: torch.nn.Module, auto: bool, store: PrefixStore | None) -> None:
    """Turn auto mode on (over `store`, or the process-wide store at each call when None) or off."""
    if store is not None and not isinstance(store, PrefixStore):
        raise TypeError(f"store must be a PrefixStore or None, got {type(store).__name__}")
    if store is not None and not auto:
        raise ValueError("store= is the store auto mode uses: pass it with auto=True.")
    if auto and not hasattr(model, "_hf_hybrid_cache_path"):
        raise ValueError(f"{type(model).__name__} has no generate(): auto mode applies to models that generate.")
    model._hf_hybrid_cache_auto = auto
    model._hf_hybrid_cache_auto_store = store


def wants_cache(model: torch.nn.Module, args: tuple, kwargs: dict) -> bool:
    """Whether a generate call that passed no cache should run on a `HybridPrefixCache` (auto mode is on and
    the request is one prefix caching can serve)."""
    if not getattr(model, "_hf_hybrid_cache_auto", False):
        return False
    input_ids = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
        return False

    def setting(name):
        return generation_setting(model, kwargs, name)

    if setting("use_mtp"):
        return False  # MTP drafts need the whole prompt run (request.refuse_multi_token_prediction)
    assisted = kwargs.get("assistant_model") is not None or setting("prompt_lookup_num_tokens") is not None
    # Assisted decoding needs an exact rollback: our one-pass GDNs have one (`rollback.py`), on releases whose
    # generate runs it for stateful models at all.
    served_assisted = seams.ASSISTS_STATEFUL_MODELS and getattr(model, "_hf_hybrid_cache_path", None) == "one-pass"
    return (
        setting("use_cache") is not False
        and setting("cache_implementation") is None
        and (not assisted or served_assisted)
    )


def generation_setting(model: torch.nn.Module, kwargs: dict, name: str):
    """A generate call's setting `name`: its keyword, else that of the generation config it passes, else the
    model's (None where the release has no such setting)."""
    if name in kwargs:
        return kwargs[name]
    return getattr(kwargs.get("generation_config") or model.generation_config, name, None)


def store_of(model: torch.nn.Module) -> PrefixStore | None:
    """The store auto mode uses for `model` (None: the process-wide one)."""
    return getattr(model, "_hf_hybrid_cache_auto_store", None)


def record(input_ids: torch.Tensor, num_cached_tokens: int) -> None:
    key = id(input_ids)
    if key not in _served:
        weakref.finalize(input_ids, _served.pop, key, None)
    _served[key] = (weakref.ref(input_ids), num_cached_tokens)


def cached_tokens(input_ids: torch.Tensor) -> int | None:
    """How many prompt tokens the last auto-mode `generate` on this very `input_ids` tensor was served from the
    store; None if no auto-mode request ran on it."""
    ref, num_cached_tokens = _served.get(id(input_ids), (None, None))
    return num_cached_tokens if ref is not None and ref() is input_ids else None

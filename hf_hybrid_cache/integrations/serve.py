"""`python -m hf_hybrid_cache.serve MODEL [any transformers serve option]`: transformers' own `transformers serve`
(the OpenAI-compatible local server), with every model it loads patched in auto mode, so chat clients that
resend the conversation each turn are served the shared prefix from the store, and `usage` reports
`prompt_tokens_details.cached_tokens` (the field OpenAI's API uses for prefix-cache hits).

Our own options, taken out before the rest goes to `transformers serve`: `--cache-mode` (branch, align, all,
none), `--cache-block-size`, `--cache-max-bytes-mib`, `--cache-host-mib` (a host-memory tier below it),
`--store PATH` (keep the store in a file: loaded at start if it exists, its mode and block size then win over
the flags; saved after each response and on exit), and `--remote URL` (a Redis server shared by replicas:
`store/redis_tier.py`).

With `--continuous-batching` (transformers' flag), requests run together in transformers' continuous
batching engine (`hf_hybrid_cache/continuous/`) on the same store: its pages are the store's blocks, it saves
the boundaries the store's mode says, and it reads and writes the store's host tier, file and Redis as the
sequential path does. `--cache-max-bytes-mib` then also sizes the engine's own paged K/V and state slots.

Seams into transformers' serving (`transformers.cli.serving`), checked with transformers 5.24.0 and 5.25.0.
On 5.25 each model runs in a spawned process of its own (`seams.SERVES_IN_MODEL_PROCESS`): its seams are named
in `serve_process.py`, which `install` then uses instead of the ones below. On 5.24, in the server's process:
- `ModelManager._load_model` returns every model the server loads: patched in auto mode there.
- `ChatCompletionHandler._non_streaming` / `_streaming` and `CompletionHandler`'s (chat and legacy
  completions) get the request's id and tokenized `inputs` and return the response: the usage they report
  gains the cached tokens of the generate that ran on those `input_ids` (`hf_hybrid_cache.cached_tokens`),
  or, under continuous batching, those its cache served the request.
- `CBGenerateManager.init_cb` starts the engine with the server's `ContinuousBatchingConfig`: a patched
  hybrid model gets a `HybridBatchingConfig` with our flags instead (on the store its auto mode uses). A
  request longer than that engine's whole cache gets HTTP 400 naming `--cache-max-bytes-mib` (the handlers
  above turn the error into it).
No server code of ours: requests, batching, cancellation on disconnect and errors are transformers'.
"""

import argparse
import asyncio
import atexit
import contextlib
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..cache import HybridPrefixCache
from ..patching import patch
from ..seams import SERVES_IN_MODEL_PROCESS
from ..store.prefix_store import PrefixStore, set_default_store
from .auto import cached_tokens

CACHE_MODES = ("branch", "align", "all", "none")


@dataclass(frozen=True)
class ServeSettings:
    """Our flags, as every path needs them (5.25 pickles them into each model's process).

    Attributes:
        cache_mode: the store's `mamba_cache_mode` (`CACHE_MODES`), which continuous batching follows too.
        block_size: the store's block size, which is continuous batching's page size.
        max_bytes: the store's budget, and continuous batching's `max_bytes` (its paged K/V and state slots).
        host_bytes: the budget of the store's host-memory tier (0: none).
        store_path: the file the store is loaded from (if it exists) and saved to; None: no file.
        remote: a Redis URL shared by replicas; None: no remote tier.
    """

    cache_mode: str = "branch"
    block_size: int = 64
    max_bytes: int = 1024 << 20
    host_bytes: int = 0
    store_path: Path | None = None
    remote: str | None = None

    def build_store(self) -> PrefixStore:
        """The store these settings describe: loaded from `store_path` if that file exists (its mode and block
        size then win over ours), else a new one."""
        if self.store_path is not None and self.store_path.exists():
            store = PrefixStore.load(self.store_path, max_bytes=self.max_bytes, host_bytes=self.host_bytes,
                                     remote=self.remote)
            print(f"hf_hybrid_cache: loaded {store.stats()['blocks']} blocks from {self.store_path}", flush=True)
            return store
        return PrefixStore(block_size=self.block_size, mamba_cache_mode=self.cache_mode, max_bytes=self.max_bytes,
                           host_bytes=self.host_bytes, remote=self.remote)

    def batching_fields(self) -> dict:
        """The `HybridBatchingConfig` fields continuous batching gets from our flags (its store is the one the
        served model's auto mode uses: page size and mode come from it)."""
        return dict(max_bytes=self.max_bytes)


# (store, file) saved after each response when `--store` is given.
_saved_store: tuple[PrefixStore, Path] | None = None
# `HybridBatchingConfig` fields for continuous batching, from our flags.
_batching_fields: dict = {}


def install(settings: ServeSettings | None = None) -> None:
    """Hook transformers' serving with `settings` (None: the defaults): models load patched in auto mode over a
    store built from them, responses report cached prompt tokens, the `--store` file is saved after each
    response and on exit, and continuous batching runs with our flags. On 5.25 all of it happens in each
    model's process (`serve_process.py`); on 5.24 in this one, whose process-wide store it then sets.
    Idempotent for the hooks (a second call's settings apply to models loaded after it)."""
    settings = settings or ServeSettings()
    if SERVES_IN_MODEL_PROCESS:
        from . import serve_process

        serve_process.install(settings)
        return
    store = settings.build_store()
    set_default_store(store)
    _install_in_server_process(store, settings.store_path, settings.batching_fields())
    if settings.store_path is not None:
        atexit.register(store.save, settings.store_path)


def _install_in_server_process(store: PrefixStore | None = None, store_path: Path | None = None,
                               batching: dict | None = None) -> None:
    """transformers 5.24's hooks: models load patched in auto mode over `store` (None: the process-wide store),
    and responses report cached prompt tokens; with `store_path`, `store` is saved there after each response;
    `batching`: `HybridBatchingConfig` fields for continuous batching."""
    global _saved_store
    if store_path is not None:
        if store is None:
            raise ValueError("store_path saves a given store: pass store= too")
        _saved_store = (store, Path(store_path))
    _batching_fields.update(batching or {})
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.model_manager import ModelManager
    from transformers.cli.serving.utils import CBGenerateManager

    if getattr(ModelManager._load_model, "hf_hybrid_cache", False):
        return
    ModelManager._load_model = _patching_loads(ModelManager._load_model, store)
    CBGenerateManager.init_cb = _hybrid_batching(CBGenerateManager.init_cb)
    for handler in (ChatCompletionHandler, CompletionHandler):
        handler._non_streaming = _reporting_non_streaming(handler._non_streaming)
        handler._streaming = _reporting_streaming(handler._streaming)


def patch_served_model(model, store: PrefixStore | None) -> None:
    """A model the server loaded, patched in auto mode over `store` (None: the process-wide one) if it
    generates; a store loaded from a file is checked against it now rather than at every request."""
    if hasattr(model, "generate"):
        patch(model, auto=True, store=store)
        if store is not None and store.layout is not None:
            HybridPrefixCache(model, store=store)


def hybrid_batching_config(model, config, batching: dict):
    """The continuous batching config `model` runs with: for a patched one-pass hybrid model, a
    `HybridBatchingConfig` with `config`'s fields (None: the defaults) and `batching` (from our flags) on top;
    else `config`."""
    if getattr(model, "_hf_hybrid_cache_path", None) != "one-pass":
        return config
    from ..continuous.engine import HybridBatchingConfig

    fields = {} if config is None else vars(config)
    return HybridBatchingConfig(**{**fields, **batching})


def _patching_loads(load_model, store):
    @functools.wraps(load_model)
    def patched_load(self, *args, **kwargs):
        model = load_model(self, *args, **kwargs)
        patch_served_model(model, store)
        return model

    patched_load.hf_hybrid_cache = True
    return patched_load


def _hybrid_batching(init_cb):
    @functools.wraps(init_cb)
    def hybrid_init_cb(self, model, gen_config):
        if self._cb is None:
            self._cb_config = hybrid_batching_config(model, self._cb_config, _batching_fields)
        return init_cb(self, model, gen_config)

    hybrid_init_cb.hf_hybrid_cache = True
    return hybrid_init_cb


def _cached_tokens_of(request_id: str, input_ids, gen_manager) -> int | None:
    """The prompt tokens the request was served from a cache: continuous batching's (by request id), or the
    store's through auto mode's generate (by input ids)."""
    engine = getattr(gen_manager, "_cb", None)
    if engine is None:
        return cached_tokens(input_ids)
    return batching_cached_tokens(engine, request_id)


def batching_cached_tokens(manager, request_id: str) -> int | None:
    """The prompt tokens continuous batching's cache served request `request_id` (None: a cache that does not
    report them, one not ours)."""
    cache = getattr(manager.batch_processor, "cache", None)
    reported = getattr(cache, "cached_tokens", None)
    return None if reported is None else reported.get(request_id, 0)


def _gen_manager(args: tuple, kwargs: dict):
    """The handlers' `gen_manager` argument (after `gen_config`; by keyword in chat, by position in completions)."""
    return kwargs["gen_manager"] if "gen_manager" in kwargs else args[1]


def with_cached_tokens(payload: dict, num_cached: int | None) -> dict:
    """`payload` (a completion or a chunk, as JSON) with `usage.prompt_tokens_details.cached_tokens` set."""
    if payload.get("usage") is not None and num_cached is not None:
        payload["usage"]["prompt_tokens_details"] = {"cached_tokens": num_cached}
    return payload


@contextlib.contextmanager
def _too_long_as_bad_request():
    """A request longer than continuous batching's whole cache: HTTP 400 with the reason (transformers
    answers an unexpected error with a bare 500)."""
    from fastapi import HTTPException

    from ..continuous.engine import RequestTooLongError

    try:
        yield
    except RequestTooLongError as error:
        raise HTTPException(status_code=400, detail=str(error)) from error


def _reporting_non_streaming(non_streaming):
    @functools.wraps(non_streaming)
    async def reporting(self, request_id, model, processor, model_id, inputs, *args, **kwargs):
        from starlette.responses import JSONResponse

        with _too_long_as_bad_request():
            response = await non_streaming(self, request_id, model, processor, model_id, inputs, *args, **kwargs)
        num_cached = _cached_tokens_of(request_id, inputs["input_ids"], _gen_manager(args, kwargs))
        payload = with_cached_tokens(json.loads(response.body), num_cached)
        await _save_store()
        return JSONResponse(payload, status_code=response.status_code, media_type=response.media_type)

    return reporting


def _reporting_streaming(streaming):
    @functools.wraps(streaming)
    def reporting(self, request_id, model, processor, model_id, inputs, *args, **kwargs):
        with _too_long_as_bad_request():
            response = streaming(self, request_id, model, processor, model_id, inputs, *args, **kwargs)
        count = functools.partial(_cached_tokens_of, request_id, inputs["input_ids"], _gen_manager(args, kwargs))
        response.body_iterator = _saving_after(report_in_events(response.body_iterator, count))
        return response

    return reporting


async def report_in_events(events, count_cached):
    """Server-sent events as they come, the one carrying `usage` (sent after generation) with cached tokens
    (`count_cached()`, asked then)."""
    async for part in events:
        if '"usage"' in part:
            lines = []
            for line in part.split("\n"):
                if line.startswith("data: {"):
                    line = "data: " + json.dumps(with_cached_tokens(json.loads(line[len("data: ") :]), count_cached()))
                lines.append(line)
            part = "\n".join(lines)
        yield part


async def _saving_after(events):
    """`events`, then the `--store` file saved before the stream ends."""
    async for part in events:
        yield part
    await _save_store()


async def _save_store() -> None:
    """Save the `--store` file (atomically), off the event loop; other requests keep being served."""
    if _saved_store is not None:
        store, path = _saved_store
        await asyncio.to_thread(store.save, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hf_hybrid_cache.serve",
        usage="%(prog)s MODEL [our options] [transformers serve options]",
        description="transformers serve with prefix caching. MODEL: a checkpoint folder or Hub id (for a tiny "
        "offline one: python -m hf_hybrid_cache.tiny save DIR). Options not listed here go to `transformers serve`.",
    )
    parser.add_argument("--cache-mode", choices=CACHE_MODES, default="branch")
    parser.add_argument("--cache-block-size", type=int, default=64)
    parser.add_argument("--cache-max-bytes-mib", type=int, default=1024)
    parser.add_argument("--cache-host-mib", type=int, default=0, help="a host-memory tier of the store (0: none)")
    parser.add_argument("--store", type=Path, default=None, help="a file that keeps the store across restarts")
    parser.add_argument("--remote", default=None, help="a Redis URL shared by replicas (redis://host:6379/0)")
    ours, rest = parser.parse_known_args(argv)
    install(ServeSettings(cache_mode=ours.cache_mode, block_size=ours.cache_block_size,
                          max_bytes=ours.cache_max_bytes_mib << 20, host_bytes=ours.cache_host_mib << 20,
                          store_path=ours.store, remote=ours.remote))
    from transformers.cli.transformers import app

    app(["serve", *rest], prog_name="transformers")


if __name__ == "__main__":
    main(sys.argv[1:])

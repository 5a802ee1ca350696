"""Our hooks in transformers 5.25's serving, where each model runs in a spawned process of its own
(`seams.SERVES_IN_MODEL_PROCESS`): what `serve.py` does in the server's process on 5.24, split between the
model's process (store, patching, runners) and the API server (usage). Flags, store and CLI are `serve.py`'s.

Seams into `transformers.cli.serving`, checked with transformers 5.25.0:
- `model_manager.ModelLoader`, which `Serve` builds and every model's process gets a pickled copy of
  (`EngineClient.start_process` spawns it with `partial(loader.load_model_and_processor, model_id)`):
  replaced by `HybridModelLoader`, which carries our settings there. In that process, its
  `load_model_and_processor` builds the store (`--store`, `--remote`), patches the model in auto mode, saves
  the store file on SIGTERM (how the server stops a model's process, which runs no `atexit`), and puts our
  runners in place of these two:
- `model_manager.GenerateRunner` / `CBGenerateRunner`, which `EngineClient.run_engine` builds once the model
  is loaded, and which send each finished request's result to the API server (`send_results`): ours send a
  generate's with the prompt tokens a cache served it (`ServedTokens` instead of its token list,
  `StreamServed` instead of a stream's None), once the `--store` file is saved; continuous batching starts
  with a `HybridBatchingConfig` from our flags (`_start_continuous_batching`).
- `EngineClient._send_request`, which hands a request's result to the handler awaiting it: the cached tokens
  go to the HTTP request's `RequestUsage` (a context variable, which a stream's task inherits), the result
  as transformers sent it.
- `ChatCompletionHandler.handle_request` / `CompletionHandler.handle_request`: the usage they report gains the
  cached tokens. Under continuous batching a stream's response waits for its first token, so that a request
  the engine refuses (longer than its whole cache: a `ValueError` naming `--cache-max-bytes-mib`) gets
  HTTP 400 as it does without streaming, not an error event after a 200.
With `--api-server-count` above 1 the API servers are spawned without the last two: models are cached, but
`usage` does not report it.
"""

import contextvars
import functools
import json
import logging
import os
import queue
import signal
import threading
from dataclasses import dataclass

from transformers.cli.serving import model_manager
from transformers.cli.serving.utils import CBGenerateRunner, GenerateRunner

from ..store.prefix_store import PrefixStore, set_default_store
from .auto import cached_tokens
from .serve import (ServeSettings, batching_cached_tokens, hybrid_batching_config, patch_served_model,
                    report_in_events, with_cached_tokens)

logger = logging.getLogger(__name__)

# The settings `install` was given (in the server's process): every loader built there carries them.
_settings = ServeSettings()
# In a model's process, once its loader loaded the model: its store and settings (one model per process).
_process: "_ModelProcess | None" = None
# A request `_Reporting` is not generating for (a submitted function, a cancelled request).
_NOT_GENERATING = object()


def install(settings: ServeSettings) -> None:
    """Hook transformers 5.25's serving (see the module's docstring): models loaded from now on get `settings`.
    Idempotent."""
    global _settings
    _settings = settings
    if model_manager.ModelLoader is HybridModelLoader:
        return
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.completion import CompletionHandler

    model_manager.ModelLoader = HybridModelLoader
    engine = model_manager.EngineClient
    engine._send_request = _reporting_send_request(engine._send_request)
    for handler in (ChatCompletionHandler, CompletionHandler):
        handler.handle_request = _reporting_handle_request(handler.handle_request)


# ----- in the model's process -----


class ServedTokens(list):
    """A finished generate's tokens, as they cross to the API server, with the prompt tokens a cache served it
    (`cached_tokens`). Pickled as a list with its attributes."""

    def __init__(self, tokens: list[int], cached_tokens: int):
        super().__init__(tokens)
        self.cached_tokens = cached_tokens


@dataclass(frozen=True)
class StreamServed:
    """What a finished streamed generate sends instead of None: the prompt tokens a cache served it."""

    cached_tokens: int


class HybridModelLoader(model_manager.ModelLoader):
    """transformers' loader, with our settings (`settings`, taken from `install` when built) as an attribute so
    that they travel into each model's process with it, where `load_model_and_processor` sets that process up."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = _settings

    def load_model_and_processor(self, model_id: str, on_progress=None):
        model, processor = super().load_model_and_processor(model_id, on_progress=on_progress)
        _set_up_model_process(model, self.settings)
        return model, processor


class _ModelProcess:
    """What our runners use in a model's process: its store, our settings, and the saving of `--store`."""

    def __init__(self, store: PrefixStore, settings: ServeSettings):
        self.store, self.settings = store, settings
        self._save_lock = threading.Lock()  # the saver thread and SIGTERM's handler

    @property
    def saves(self) -> bool:
        return self.settings.store_path is not None

    def save(self) -> None:
        """Save the `--store` file (atomically: a crash leaves the previous one); requests go on meanwhile."""
        if self.saves:
            with self._save_lock:
                self.store.save(self.settings.store_path)


def _set_up_model_process(model, settings: ServeSettings) -> None:
    """The model's process, once its model is loaded: our store, the model patched over it, our runners (which
    `run_engine` builds next), and the store file saved when the server stops the process."""
    global _process
    store = settings.build_store()
    set_default_store(store)
    patch_served_model(model, store)
    _process = _ModelProcess(store, settings)
    model_manager.GenerateRunner, model_manager.CBGenerateRunner = HybridGenerateRunner, HybridCBGenerateRunner
    if _process.saves:  # `load` runs on the main thread, which alone may set handlers
        signal.signal(signal.SIGTERM, _save_then_terminate)


def _save_then_terminate(signum, frame) -> None:
    """SIGTERM: the store file saved (the server's further SIGTERMs ignored meanwhile), then the process ends
    as SIGTERM ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        _process.save()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


class _Reporting:
    """What our runners add to transformers': each finished generate's result carries the prompt tokens a cache
    served it (`_cached_tokens`). Finished results leave through `_send_finished`: with `--store`, once the
    file is saved after them."""

    def __init__(self, model, processor, send_results, *args):
        self._generating: dict[int, object] = {}  # request id -> its input_ids, until its result leaves
        self._send_to_server = send_results
        self._send_finished = send_results
        if _process is not None and _process.saves:  # with `--store`, once the file is saved
            self._send_finished = _saving_first(send_results, _process.save)
        super().__init__(model, processor, self._send_reporting, *args)

    def generate(self, request_id: int, inputs: dict, generation_kwargs: dict, stream: bool) -> None:
        self._generating[request_id] = inputs["input_ids"]
        try:
            super().generate(request_id, inputs, generation_kwargs, stream)
        except Exception:
            self._generating.pop(request_id, None)
            raise

    def cancel(self, request_id: int) -> None:
        self._generating.pop(request_id, None)  # its result, if one still comes, goes to nobody
        super().cancel(request_id)

    def _cached_tokens(self, request_id: int, input_ids) -> int | None:
        raise NotImplementedError

    def _send_reporting(self, ids: list[int], tokens: list[int], finished: list) -> None:
        if not finished:  # streamed tokens go as they come
            self._send_to_server(ids, tokens, finished)
            return
        self._send_finished(ids, tokens, [(request_id, self._reported(request_id, result))
                                          for request_id, result in finished])

    def _reported(self, request_id: int | None, result):
        input_ids = self._generating.pop(request_id, _NOT_GENERATING)
        if input_ids is _NOT_GENERATING or isinstance(result, BaseException):
            return result
        num_cached = self._cached_tokens(request_id, input_ids)
        if num_cached is None:
            return result
        if result is None:
            return StreamServed(num_cached)
        return ServedTokens(result, num_cached) if isinstance(result, list) else result


class HybridGenerateRunner(_Reporting, GenerateRunner):
    """transformers' sequential runner (one `generate` at a time, on the store through auto mode), reporting
    cached tokens."""

    def generate(self, request_id: int, inputs: dict, generation_kwargs: dict, stream: bool) -> None:
        # transformers moves the inputs to the model's device as it generates: moved here, that is a no-op, and
        # the tensor auto mode records the cached tokens on is the one `_cached_tokens` gets
        device = self.model.device
        inputs = {name: value.to(device) if hasattr(value, "to") else value for name, value in inputs.items()}
        super().generate(request_id, inputs, generation_kwargs, stream)

    def _cached_tokens(self, request_id: int, input_ids) -> int | None:
        return cached_tokens(input_ids)


class HybridCBGenerateRunner(_Reporting, CBGenerateRunner):
    """transformers' continuous batching runner, on a `HybridBatchingConfig` from our flags for a patched hybrid
    model (on the model's store), reporting the prompt tokens the store served each request."""

    def _start_continuous_batching(self, model, cb_config, context_length):
        config = hybrid_batching_config(model, cb_config, _process.settings.batching_fields())
        return super()._start_continuous_batching(model, config, context_length)

    def generate(self, request_id: int, inputs: dict, generation_kwargs: dict, stream: bool) -> None:
        try:
            super().generate(request_id, inputs, generation_kwargs, stream)
        except ValueError:  # refused (longer than the whole cache): not running, so not among the running
            with self.lock:
                self.active_requests.pop(request_id, None)
            raise

    def _cached_tokens(self, request_id: int, input_ids) -> int | None:
        return batching_cached_tokens(self.manager, str(request_id))


def _saving_first(send_results, save):
    """`send_results` for finished results, which leave once `save()` has run after them: a client that has its
    answer finds it in the file. On a thread of its own, so the next request generates meanwhile; results
    waiting together share one save."""
    pending: queue.SimpleQueue = queue.SimpleQueue()

    def save_and_send() -> None:
        while True:
            messages = [pending.get()]
            while not pending.empty():
                messages.append(pending.get())
            try:
                save()
            except Exception:  # the answers still go: a failed save loses the file's update, not the requests
                logger.exception("Saving the store file failed")
            for message in messages:
                send_results(*message)

    threading.Thread(target=save_and_send, name="store-saver", daemon=True).start()
    return lambda *message: pending.put(message)


# ----- in the API server -----


@dataclass
class RequestUsage:
    """What the API server learns of one HTTP request's generate in the model's process, for its usage."""

    cached_tokens: int | None = None
    streamer: object = None  # the request's `Detokenizer`, when it streams
    ended: bool = False
    error: BaseException | None = None

    def answered(self) -> bool:
        """Whether the engine answered: a token streamed, or the request ended."""
        return self.ended or (self.streamer is not None and self.streamer.total_tokens > 0)


_request_usage: contextvars.ContextVar[RequestUsage | None] = contextvars.ContextVar("hf_hybrid_cache_usage",
                                                                                      default=None)


def _reporting_send_request(send_request):
    @functools.wraps(send_request)
    async def reporting(self, method: str, args: tuple, streamer=None):
        usage = _request_usage.get()
        if usage is not None:
            usage.streamer = streamer
        try:
            result = await send_request(self, method, args, streamer)
        except Exception as error:
            if usage is not None:
                usage.error = error
            raise
        finally:
            if usage is not None:
                usage.ended = True
        if isinstance(result, (ServedTokens, StreamServed)):
            if usage is not None:
                usage.cached_tokens = result.cached_tokens
            result = list(result) if isinstance(result, ServedTokens) else None
        return result

    reporting.hf_hybrid_cache = True
    return reporting


def _reporting_handle_request(handle_request):
    @functools.wraps(handle_request)
    async def reporting(self, body: dict, request_id: str):
        from starlette.responses import JSONResponse, StreamingResponse

        usage = RequestUsage()
        token = _request_usage.set(usage)
        try:
            response = await handle_request(self, body, request_id)
        finally:
            _request_usage.reset(token)
        if not isinstance(response, StreamingResponse):
            payload = with_cached_tokens(json.loads(response.body), usage.cached_tokens)
            return JSONResponse(payload, status_code=response.status_code, media_type=response.media_type)
        events, first_parts = response.body_iterator, []
        if self.model_manager.get_engine(body.get("model")).use_cb:
            first_parts = await _until_answered(events, usage)
        response.body_iterator = report_in_events(_chained(first_parts, events), lambda: usage.cached_tokens)
        return response

    reporting.hf_hybrid_cache = True
    return reporting


async def _until_answered(events, usage: RequestUsage) -> list[str]:
    """A stream's first parts, read until its engine answered (`RequestUsage.answered`). A request the engine
    refused before streaming a token (a `ValueError`: the request's fault) raises it here, for the HTTP error
    the server gives it without streaming."""
    parts = []
    while not usage.answered():
        try:
            parts.append(await anext(events))
        except StopAsyncIteration:
            break
    if isinstance(usage.error, ValueError) and not (usage.streamer is not None and usage.streamer.total_tokens):
        await events.aclose()
        raise usage.error
    return parts


async def _chained(parts: list[str], events):
    for part in parts:
        yield part
    async for part in events:
        yield part

"""What the continuous batching tests share: greedy settings, a config on a store of its own, the cold
oracle's tokens, prompts sharing a prefix, and a started manager (`Session`)."""

import torch
import transformers
from transformers import GenerationConfig

import hf_hybrid_cache as hhc
from cold_oracle import random_tokens

transformers.logging.set_verbosity_error()
PAGE = 16
NEW_TOKENS = 8


def greedy(max_new_tokens=NEW_TOKENS, **fields):
    return GenerationConfig(**{"max_new_tokens": max_new_tokens, "do_sample": False, "eos_token_id": -1, "pad_token_id": 0,
                               **fields})


def store(mode="branch", **settings):
    return hhc.PrefixStore(**{"block_size": PAGE, "mamba_cache_mode": mode, "max_bytes": 16 << 20, **settings})


def config(**fields):
    """A config on a store of its own with 16-token blocks, unless `fields` give one."""
    return hhc.HybridBatchingConfig(**{"max_bytes": 32 << 20, **fields, "store": fields.get("store") or store()})


def cold_tokens(cold, prompt: list[int], max_new_tokens=NEW_TOKENS) -> list[int]:
    output = cold.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None,
                           pad_token_id=0)
    return output[0, len(prompt):].tolist()


def prompts_sharing(prefix_len: int, tail_lens, seed=0) -> list[list[int]]:
    prefix = random_tokens(prefix_len, seed=seed).tolist()
    return [prefix + random_tokens(n, seed=seed + 1 + i).tolist() for i, n in enumerate(tail_lens)]


class Session:
    """A started manager on a store of its own (`mode`) unless given one; `run` submits prompts together and
    waits for all of them."""

    def __init__(self, model, generation_config=None, mode="branch", **fields):
        fields.setdefault("store", store(mode))
        self.store = fields["store"]
        self.manager = model.init_continuous_batching(generation_config=generation_config or greedy(),
                                                      continuous_batching_config=config(**fields))
        self.manager.start()
        self.model = model

    @property
    def cache(self):
        return self.manager.batch_processor.cache

    def run(self, prompts, **kwargs) -> list:
        ids = [self.manager.add_request(prompt, **kwargs) for prompt in prompts]
        results = self.collect(ids)
        return [results[request_id] for request_id in ids]

    def collect(self, ids, on_partial=None) -> dict:
        """The finished outputs of `ids` (transformers' output queue holds every request's, in any order);
        `on_partial` sees each streamed output."""
        results = {}
        while set(ids) - set(results):
            output = self.manager.get_result(timeout=120)
            assert output is not None, "no output within 120 s"
            if output.is_finished() and output.request_id in ids:
                results[output.request_id] = output
            elif on_partial is not None:
                on_partial(output)
        return results

    def close(self):
        self.manager.stop(block=True)
        self.model.destroy_cached_continuous_batching_manager()

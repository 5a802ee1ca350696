"""`python -m hf_hybrid_cache.check MODEL [--dtype ...]`: is prefix caching exact on this checkpoint, with this
transformers release? Runs a few prompts cold (an unpatched copy on a `DynamicCache`) and with hits from a store
in each mode, and prints per mode the hit tokens, the largest first-step logit difference and whether the greedy
tokens are equal, then a verdict. Exits 1 on any mismatch (or when a mode that should hit served nothing).

This is how a model family or a transformers release the test suite never ran is verified before serving it.
"""

import argparse
import copy
import sys
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from .cache import HybridPrefixCache
from .patching import patch
from .store.modes import MAMBA_CACHE_MODES
from .store.prefix_store import PrefixStore

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Below the model's own error when it continues a cache (`continuation_error`), differences are noise.
MIN_TOLERANCE = 1e-3
ERROR_FACTOR = 4


@dataclass
class PromptResult:
    name: str
    prompt_tokens: int
    hit_tokens: int
    max_logit_diff: float
    greedy_equal: bool


def _generate(model, input_ids: torch.Tensor, cache, max_new_tokens: int):
    return model.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), cache=cache, max_new_tokens=max_new_tokens,
        do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0,
    )


@torch.no_grad()
def continuation_error(cold_model, tokens: torch.Tensor, split: int) -> float:
    """Largest logit difference between one forward over `tokens` `[1, n]` and a prefill of `split` tokens then
    one multi-token step on its cache: the model's own error when it continues a cache, which bounds how exactly
    any cached run can match a cold one."""
    full = cold_model(tokens).logits
    cache = DynamicCache(config=cold_model.config)
    cold_model(tokens[:, :split], cache=cache)
    positions = torch.arange(split, tokens.shape[1], device=tokens.device)[None]
    continued = cold_model(tokens[:, split:], cache=cache, position_ids=positions).logits
    return (continued.float() - full[:, split:].float()).abs().max().item()


def check_prompts(vocab_size: int, block_size: int, seed: int, device) -> dict[str, torch.Tensor]:
    """Prompts `[1, n]` that share prefixes as chats and documents do: three questions after one system prompt
    of 3.5 blocks (no hit, a branch point, then hits), and an exact repeat of the first."""
    generator = torch.Generator().manual_seed(seed)
    high = min(vocab_size, 1000)

    def tokens(n: int) -> torch.Tensor:
        return torch.randint(3, high, (1, n), generator=generator)

    system = tokens(block_size * 7 // 2)
    prompts = {f"question {i + 1}": torch.cat([system, tokens(block_size // 2 + 3 * i)], dim=1) for i in range(3)}
    prompts["repeat of question 1"] = prompts["question 1"]
    return {name: prompt.to(device) for name, prompt in prompts.items()}


def run_check(model, cold_model, block_size: int = 32, max_new_tokens: int = 8, seed: int = 0, modes=MAMBA_CACHE_MODES,
              tolerance: float | None = None) -> tuple[float, dict[str, list[PromptResult]]]:
    """Per mode, each prompt run cold on `cold_model` and cached on the patched `model` (one store per mode,
    prompts in order, plus the next turn of the first chat). Returns the tolerance used and the results."""
    device = next(model.parameters()).device
    prompts = check_prompts(model.config.get_text_config().vocab_size, block_size, seed, device)
    first = prompts["question 1"]
    if tolerance is None:
        error = continuation_error(cold_model, first, first.shape[1] * 2 // 3)
        tolerance = max(MIN_TOLERANCE, ERROR_FACTOR * error)
    cold = {name: _generate(cold_model, prompt, DynamicCache(config=cold_model.config), max_new_tokens)
            for name, prompt in prompts.items()}
    # The chat's next turn: the first question, its cold answer and a follow-up.
    follow_up = torch.randint(3, 50, (1, block_size // 2), generator=torch.Generator().manual_seed(seed + 1)).to(device)
    prompts["next turn of question 1"] = torch.cat([cold["question 1"].sequences, follow_up], dim=1)
    cold["next turn of question 1"] = _generate(cold_model, prompts["next turn of question 1"],
                                                DynamicCache(config=cold_model.config), max_new_tokens)
    results = {}
    for mode in modes:
        store = PrefixStore(block_size=block_size, mamba_cache_mode=mode, max_bytes=1 << 30)
        results[mode] = []
        for name, prompt in prompts.items():
            cache = HybridPrefixCache(model, store=store)
            out = _generate(model, prompt, cache, max_new_tokens)
            diff = (out.logits[0].float() - cold[name].logits[0].float()).abs().max().item()
            equal = torch.equal(out.sequences, cold[name].sequences)
            results[mode].append(PromptResult(name, prompt.shape[1], cache.num_cached_tokens, diff, equal))
        store.close()
    return tolerance, results


def verdicts(tolerance: float, results: dict[str, list[PromptResult]], attention_only: bool) -> dict[str, str]:
    """Per mode: "exact", or what went wrong. Mode none saves no recurrent state, so only a model without
    recurrent layers (`attention_only`) hits there."""
    out = {}
    for mode, rows in results.items():
        problems = [f"greedy tokens differ on {r.name}" for r in rows if not r.greedy_equal]
        problems += [f"first-step logits differ by {r.max_logit_diff:.2e} on {r.name}" for r in rows
                     if r.max_logit_diff > tolerance]
        if (mode != "none" or attention_only) and not any(r.hit_tokens for r in rows):
            problems.append("no prompt was served from the store")
        out[mode] = "exact" if not problems else "; ".join(problems)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hf_hybrid_cache.check",
        description="Compare cached generation with cold generation on a checkpoint, per mode.",
    )
    parser.add_argument("model", help="a checkpoint directory or a Hub id")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--modes", nargs="+", choices=MAMBA_CACHE_MODES, default=list(MAMBA_CACHE_MODES))
    parser.add_argument("--tolerance", type=float, default=None,
                        help=f"largest first-step logit difference accepted (default: max({MIN_TOLERANCE}, "
                             f"{ERROR_FACTOR}x the model's own cache-continuation error))")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--allow-untested-transformers", action="store_true",
                        help="run on a transformers release outside the tested range (what this check is for)")
    args = parser.parse_args(argv)

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=DTYPES[args.dtype],
                                                 trust_remote_code=args.trust_remote_code).to(args.device).eval()
    cold_model = copy.deepcopy(model)  # unpatched: transformers' own code path
    patch(model, allow_untested_transformers=args.allow_untested_transformers or None)
    tolerance, results = run_check(model, cold_model, args.block_size, args.max_new_tokens, modes=args.modes,
                                   tolerance=args.tolerance)
    mode_verdicts = verdicts(tolerance, results, attention_only=model._hf_hybrid_cache_path == "attention-only")
    print(f"{args.model} ({model.config.model_type}, {args.dtype}, path {model._hf_hybrid_cache_path}), "
          f"block size {args.block_size}, tolerance {tolerance:.2e}")
    for mode, rows in results.items():
        print(f"\nmode {mode}: {mode_verdicts[mode]}")
        print(f"  {'prompt':<26} {'tokens':>6} {'hit tokens':>10} {'max |Δ logit|':>14}  greedy equal")
        for r in rows:
            print(f"  {r.name:<26} {r.prompt_tokens:>6} {r.hit_tokens:>10} {r.max_logit_diff:>14.2e}  "
                  f"{'yes' if r.greedy_equal else 'NO'}")
    exact = all(v == "exact" for v in mode_verdicts.values())
    print(f"\nverdict: {'exact in every mode' if exact else 'MISMATCH: do not serve this model with hf_hybrid_cache'}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())

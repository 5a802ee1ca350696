"""Every `model_type` of the installed transformers whose default cache has recurrent, conv, hybrid, sliding or
indexed layers, with what `hhc.patch()` decides for it: the path (one-pass / generic / attention-only), or the
reason it refuses. The README's family table is this script's output.

    .venv/bin/python scripts/family_table.py [--markdown]

Each model is built from its default config on the meta device (no memory, no weights) and patched, so the
decision is `patch()`'s own; a model whose default config does not build is built from its tiny config. "tested"
marks the families `tests/models/test_families.py` runs on tiny configs (cached equal to cold, hits as each mode
predicts): hand-written ones, and shrunk default configs.
"""

import argparse
import collections
import contextlib
import io
import re
import warnings

import torch
import transformers
from transformers import CONFIG_MAPPING
from transformers.cache_utils import DynamicCache
from transformers.models.auto import modeling_auto

import hf_hybrid_cache as hhc
from hf_hybrid_cache.tiny import AUTO_TINY_FAMILIES, TINY_FAMILIES, tiny_config, tiny_default_config

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
CLASS_MAPPINGS = (  # where a model type's generating class is found, in order
    modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    modeling_auto.MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES,
)
TESTED = {"qwen3_next", *TINY_FAMILIES, "qwen3_5_text", "qwen3_5_moe_text", "gemma3", "inkling_text", "inkling2_text",
          "inkling2_loop_text", "qwen4_exp_text", "glm5_next_text", "mistral"}
TESTED_ALIASES = {"qwen3_5_vl": "qwen3_5", "mistral_sliding": "mistral", "qwen4_exp_ple": "qwen4_exp"}


def cache_kinds(config) -> collections.Counter:
    return collections.Counter(type(layer).__name__ for layer in DynamicCache(config=config).layers)


def candidate_configs(model_type: str, config):
    """The configs to build `model_type`'s model from, in order: its default config, its text config (a text class
    mapped from a vision-language type), then where those do not build, the tiny config the tests use."""
    yield lambda: config
    yield lambda: config.get_text_config(decoder=True)
    hand_written = [name for name, (config_class, *_) in TINY_FAMILIES.items()
                    if config_class in (type(config).__name__, type(config.get_text_config(decoder=True)).__name__)]
    if hand_written:
        yield lambda: tiny_config(hand_written[0])
    yield lambda: tiny_default_config(model_type)


def decide(model_type: str) -> tuple[str, str, str] | None:
    """(model class, cache layers, decision) for a relevant model type; None when its cache is plain K/V."""
    config = CONFIG_MAPPING[model_type]()
    try:
        kinds = cache_kinds(config)
    except Exception:  # a config that describes no decoder cache (a detector, a vision tower)
        return None
    if not set(kinds) - {"DynamicLayer", "DummyLayer"}:
        return None
    described = ", ".join(f"{name.replace('Layer', '').replace('Dynamic', '') or 'Full'} x{count}"
                          for name, count in sorted(kinds.items()))
    class_name = next((mapping[model_type] for mapping in CLASS_MAPPINGS if model_type in mapping), None)
    if class_name is None:
        return "-", described, "no generating class (an encoder, a tower or a part of another model)"
    if getattr(config, "is_encoder_decoder", False):
        return class_name, described, "refused: encoder-decoder"
    model = None
    for candidate in candidate_configs(model_type, config):
        try:
            with torch.device("meta"), contextlib.redirect_stdout(io.StringIO()):
                model = getattr(transformers, class_name)(candidate())
            break
        except Exception as error:
            failure = error
    if model is None:
        missing = re.search(r"requires the (\S+) library", str(failure))
        reason = f"needs {missing.group(1)}, not installed" if missing else type(failure).__name__
        return class_name, described, f"not built from its default or tiny config here ({reason})"
    try:
        hhc.patch(model)
    except ValueError as error:
        reason = str(error).split(". Supported:")[0].rstrip(".")
        return class_name, described, "refused: " + (reason.split(": ", 1)[-1] if "cannot be served" in reason else reason)
    return class_name, described, getattr(model, "_hf_hybrid_cache_path", "patched (no generate)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="README table rows")
    args = parser.parse_args()
    tested = TESTED | {TESTED_ALIASES.get(name, name) for name in TINY_FAMILIES} | set(AUTO_TINY_FAMILIES)
    rows = []
    for model_type in sorted(CONFIG_MAPPING.keys()):
        try:
            decided = decide(model_type)
        except Exception as error:  # a config that cannot even be made with its defaults
            decided = ("-", "-", f"default config fails ({type(error).__name__})")
        if decided is not None:
            rows.append((model_type, *decided, "yes" if model_type in tested else ""))
    if args.markdown:
        parts = [row[0] for row in rows if row[1] == "-"]
        print("| `model_type` | class | cache layers (default config) | decision | tested |")
        print("|---|---|---|---|---|")
        for row in rows:
            if row[1] != "-":
                print("| `{}` | {} | {} | {} | {} |".format(*row))
        print(f"\nNo generating class (encoders, towers, parts of other models): {', '.join(f'`{p}`' for p in parts)}.")
    else:
        for row in rows:
            print(" | ".join(row))
    counts = collections.Counter(row[3].split(":")[0] for row in rows)
    print(f"\n{len(rows)} model types: " + ", ".join(f"{count} {name}" for name, count in counts.most_common()))


if __name__ == "__main__":
    main()

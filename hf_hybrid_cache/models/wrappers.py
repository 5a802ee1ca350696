"""The wrappers users put around a transformers model, and the model behind them that `patch` serves.

- peft's `PeftModel` (LoRA and the other tuner methods): its `generate` calls its base model's, so the base
  model is patched; adapter state is keyed by `peft_state.py`. Prompt-learning methods (prompt tuning,
  prefix tuning, p-tuning) put virtual tokens or K/V before the prompt that the keys cannot see: refused.
- `torch.compile(model)` (`OptimizedModule`): attribute reads such as `generate` reach the original
  module, which is patched; the compiled forward is only the wrapper's own `__call__`.
Checked with peft 0.21 and torch 2.13.
"""

import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model behind `model`'s wrappers (`model` itself when it has none).

    Raises:
        ValueError: a prompt-learning peft model, whose virtual tokens the block keys cannot see.
    """
    while True:
        if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
            if model.active_peft_config.is_prompt_learning:
                raise ValueError(
                    f"{type(model).__name__} uses {model.active_peft_config.peft_type} (prompt learning): its virtual "
                    "tokens come before the prompt, where the block keys cannot see them. Prefix caching serves "
                    "LoRA-style adapters (and merged models); use generate without hf_hybrid_cache for this one."
                )
            model = model.get_base_model()
        elif isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
            model = model._orig_mod
        else:
            return model

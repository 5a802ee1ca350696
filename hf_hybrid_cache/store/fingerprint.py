"""The model fingerprint at the root of every block key, computed once per model and checked cheaply after.

Two models (or one model before and after its weights changed) must never meet each other's entries. The
fingerprint digests the config, every parameter's name, dtype, device and size, and a sample of its values;
it is recomputed only when a parameter was replaced (data pointer), changed in place under autograd's
version counter, or shows other values where it was sampled (which catches `param.data.copy_(...)`, a write
no version counter sees).
"""

from dataclasses import dataclass

import torch

from .hashing import digest

SAMPLE_SIZE = 16  # values read at each end of every parameter


@dataclass
class _Fingerprint:
    fingerprint: bytes
    params: list[torch.Tensor]
    state: list[tuple[int, int]]  # (data pointer, version) per parameter
    # Per device: views of the sampled values (they follow in-place writes) and the values they had.
    sample_views: dict[torch.device, list[torch.Tensor]]
    samples: dict[torch.device, torch.Tensor]

    def still_valid(self, params: list[torch.Tensor]) -> bool:
        if len(params) != len(self.params) or any(a is not b for a, b in zip(params, self.params)):
            return False
        if [(param.data_ptr(), param._version) for param in params] != self.state:
            return False
        return all(torch.equal(torch.cat(views), self.samples[device]) for device, views in self.sample_views.items())


def model_fingerprint(model: torch.nn.Module, params: list[torch.Tensor] | None = None) -> bytes:
    """Digest of the config, dtypes, devices and a sample of every parameter's values (the first and last
    `SAMPLE_SIZE` of each tensor: reading all weights of an 80B model would take seconds, and these tell two
    checkpoints or random initialisations apart). Memoized on the model; see the module docstring.

    `params`: `list(model.parameters())` when the caller has it already (walking the module tree is most of
    the cost of a memoized call)."""
    params = list(model.parameters()) if params is None else params
    memo = getattr(model, "_hf_hybrid_cache_fingerprint", None)
    if memo is not None and memo.still_valid(params):
        return memo.fingerprint
    names, sample_views = [], {}
    for name, param in model.named_parameters():
        flat = param.detach().reshape(-1)
        names.append(f"{name}:{param.dtype}:{param.device}:{param.numel()}")
        sample_views.setdefault(param.device, []).extend([flat[:SAMPLE_SIZE], flat[-SAMPLE_SIZE:]])
    samples = {device: torch.cat(views) for device, views in sample_views.items()}
    parts = [model.config.to_json_string(use_diff=False).encode(), "\n".join(names).encode()]
    for device in sorted(samples, key=str):
        # One copy to the host per device; as fp32 bytes, whatever the parameters' dtype.
        parts.append(samples[device].float().cpu().numpy().tobytes())
    memo = _Fingerprint(
        fingerprint=digest(*parts),
        params=params,
        state=[(param.data_ptr(), param._version) for param in params],
        sample_views=sample_views,
        samples=samples,
    )
    model._hf_hybrid_cache_fingerprint = memo
    return memo.fingerprint

"""A patched model trains exactly like the unpatched one: any forward autograd must differentiate runs on
transformers' own layers (our kernels have no backward); inference under no_grad runs on our kernels."""

import pytest
import torch

import hf_hybrid_cache as hhc
from cold_oracle import random_tokens
from hf_hybrid_cache import kernels
from hf_hybrid_cache.tiny import tiny_model

ONE_PASS_FAMILIES = ["qwen3_next", "qwen3_5", "qwen3_5_moe", "olmo_hybrid", "lfm2", "lfm2_moe", "lfm3"]


@pytest.fixture(params=ONE_PASS_FAMILIES)
def models(request):
    return tiny_model(request.param, seed=0), hhc.patch(tiny_model(request.param, seed=0))


def loss_and_grads(model, input_ids):
    model.zero_grad()
    loss = model(input_ids, labels=input_ids).loss
    loss.backward()
    return loss.item(), [param.grad.clone() for param in model.parameters() if param.grad is not None]


def test_loss_and_gradients_equal_unpatched(models):
    cold, model = models
    input_ids = torch.stack([random_tokens(50, seed=1), random_tokens(50, seed=2)])
    cold_loss, cold_grads = loss_and_grads(cold, input_ids)
    loss, grads = loss_and_grads(model, input_ids)
    assert loss == cold_loss
    assert len(grads) == len(cold_grads) > 0
    assert all(torch.equal(grad, cold_grad) for grad, cold_grad in zip(grads, cold_grads))


def test_gradient_checkpointing_in_train_mode(models):
    cold, model = models
    input_ids = random_tokens(40, seed=3)[None]
    for m in (cold, model):
        m.train()
        m.activation_checkpointing_enable()
    try:
        cold_loss, cold_grads = loss_and_grads(cold, input_ids)
        loss, grads = loss_and_grads(model, input_ids)
    finally:
        for m in (cold, model):
            m.activation_checkpointing_disable()
            m.eval()
    assert loss == pytest.approx(cold_loss, abs=1e-6)
    assert all(torch.allclose(grad, cold_grad, atol=1e-6) for grad, cold_grad in zip(grads, cold_grads))


def test_inference_without_gradients_runs_on_our_kernels(models, monkeypatch):
    cold, model = models
    calls = []
    conv = kernels.causal_conv1d  # every one-pass layer's prefill runs it (a GDN's conv, a short conv)
    monkeypatch.setattr(kernels, "causal_conv1d", lambda *args, **kwargs: calls.append(1) or conv(*args, **kwargs))
    input_ids = random_tokens(30, seed=4)[None]
    with torch.no_grad():
        logits = model(input_ids).logits
        cold_logits = cold(input_ids).logits
    assert calls  # the one-pass kernels ran
    assert (logits - cold_logits).abs().max().item() < 1e-4
    calls.clear()
    model(input_ids).logits.sum().backward()  # parameters require grad: transformers' path
    assert not calls

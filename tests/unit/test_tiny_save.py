"""`python -m hf_hybrid_cache.tiny save DIR`: a tiny model and tokenizer in a folder, the one-line way to have
something to serve; it loads back with the same weights and its generation config keeps replies readable."""

import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_hybrid_cache.tiny import tiny_qwen3_next


def test_saved_tiny_model_loads_back_with_the_same_weights_and_readable_replies(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hf_hybrid_cache.tiny", "save", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"python -m hf_hybrid_cache.serve {tmp_path}" in result.stdout
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    built = tiny_qwen3_next(seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), built.state_dict().values()))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)["input_ids"]
    reply = tokenizer.decode(model.generate(prompt, max_new_tokens=24, do_sample=False)[0, prompt.shape[1]:],
                             skip_special_tokens=True)
    assert reply and all(char == "\n" or " " <= char <= "~" for char in reply), repr(reply)

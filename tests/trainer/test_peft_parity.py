"""Exported adapters load unchanged with PeftModel.from_pretrained and give the fleet's logits for that adapter."""

from __future__ import annotations

import json

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from lorafleet.trainer import FleetSpec, run_fleet
from lorafleet.trainer.base import build_byte_tokenizer, load_base
from lorafleet.trainer.fleet import Fleet

PROMPTS = ["abc>", "hello world>", "12+34>"]


def _ids(tok):
    rows = [[tok.bos_token_id, *tok.encode(p, add_special_tokens=False)] for p in PROMPTS]
    width = max(map(len, rows))
    return torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])


def _randomise(fleet, name, seed):
    g = torch.Generator().manual_seed(seed)
    tensors = {k: torch.randn(v.shape, generator=g) * 0.2 for k, v in fleet.adapter_tensors(name).items()}
    fleet.load_adapter_tensors(name, tensors)


def _assert_peft_matches(base_path, fleet, name, directory):
    ids = _ids(fleet.tokenizer)
    ours = fleet.logits(ids, name)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(directory)).eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=ids).logits
    assert (ours - fleet.logits(ids, None)).abs().max() > 1e-3  # the adapter really changes the output
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_trained_llama_adapter_loads_in_peft_with_same_logits(kit, lorafleet_home):
    spec = FleetSpec.model_validate(kit.fleet(
        kit.adapter("wide", "reverse", rank=4, learning_rate=0.05, max_steps=3),
        kit.adapter("narrow", "sort", rank=2, alpha=7, learning_rate=0.05, max_steps=3,
                    target_modules=r"model\.layers\.1\.(self_attn\.o_proj|mlp\.up_proj)"),
    ))  # fmt: skip
    result = run_fleet(spec)
    model, tok = load_base("tiny")
    fleet = Fleet(model, tok, "tiny")
    for adapter in spec.adapters:
        fleet.add(adapter.model_copy(update={"max_steps": 3}), seed=0)
        fleet.load_peft(adapter.name, result.adapters[adapter.name].final_checkpoint)
    tiny_path = lorafleet_home / "models" / "tiny"
    for adapter in spec.adapters:
        _assert_peft_matches(tiny_path, fleet, adapter.name, result.adapters[adapter.name].final_checkpoint)
    config = json.loads(
        (lorafleet_home / "runs" / result.run_id / "adapters/narrow/final/adapter_config.json").read_text()
    )
    assert config["r"] == 2 and config["lora_alpha"] == 7 and "o_proj" in config["target_modules"]


def test_gpt2_conv1d_adapter_loads_in_peft_with_same_logits(tmp_path):
    tok = build_byte_tokenizer()
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    model, tok = load_base(str(tmp_path / "gpt2"))
    fleet = Fleet(model, tok, str(tmp_path / "gpt2"))
    spec = FleetSpec.model_validate({
        "name": "g", "base_model": str(tmp_path / "gpt2"),
        "adapters": [{"name": "other", "family": "f", "train_data": "task:sort", "max_steps": 1, "rank": 3},
                     {"name": "conv", "family": "f", "train_data": "task:add", "max_steps": 1, "rank": 4,
                      "alpha": 12, "target_modules": ["c_attn", "c_fc", "c_proj"]}],
    })  # fmt: skip
    for i, adapter in enumerate(spec.adapters):
        fleet.add(adapter, seed=i)
        _randomise(fleet, adapter.name, seed=i)
    assert all(fleet.layers[m].is_conv1d for m in fleet.targets["conv"])
    fleet.save_peft("conv", tmp_path / "conv")
    saved = json.loads((tmp_path / "conv" / "adapter_config.json").read_text())
    assert saved["fan_in_fan_out"] is True
    _assert_peft_matches(tmp_path / "gpt2", fleet, "conv", tmp_path / "conv")

"""Concurrency must not change the maths: each adapter in a mixed step gets exactly its own gradients and updates."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from lorafleet.trainer import AdapterSpec, FleetSpec, control, run_fleet, stop_adapter, submit_adapter
from lorafleet.trainer.base import build_byte_tokenizer, load_base
from lorafleet.trainer.data import DataStream, collate, load_dataset
from lorafleet.trainer.fleet import Fleet
from lorafleet.trainer.layer import SlotAdamW

SPECS = [
    AdapterSpec(name="r2", family="f", rank=2, alpha=4, train_data="task:reverse", max_steps=3),
    AdapterSpec(
        name="r4",
        family="f",
        rank=4,
        alpha=16,
        train_data="task:sort",
        max_steps=3,
        target_modules=["q_proj", "v_proj"],
    ),  # fmt: skip
    AdapterSpec(
        name="r8",
        family="f",
        rank=8,
        alpha=8,
        train_data="task:add",
        max_steps=3,
        target_modules=r"model\.layers\.[01]\.mlp\..*",
    ),  # fmt: skip
]


def _fleet(specs, seed_of=lambda s: 7):
    model, tok = load_base("tiny", dtype="float64")
    fleet = Fleet(model, tok)
    for spec in specs:
        fleet.add(spec, seed=hash(spec.name) % 1000)
        _randomise_b(fleet, spec.name)  # B starts at zero in LoRA; make it non-zero so every gradient is
    return fleet


def _randomise_b(fleet, name):
    g = torch.Generator().manual_seed(len(name) * 31 + fleet.specs[name].rank)
    tensors = fleet.adapter_tensors(name)
    for key in [k for k in tensors if k.endswith(".B")]:
        tensors[key] = torch.randn(tensors[key].shape, generator=g, dtype=torch.float64) * 0.1
    fleet.load_adapter_tensors(name, tensors)


def _batches(tok, specs, sizes):
    return {s.name: DataStream(load_dataset(s.train_data, tok, 32, n=32), n, seed=3).next_batch()
            for s, n in zip(specs, sizes, strict=True)}  # fmt: skip


def _grads(fleet, name):
    slot, rank = fleet.slot_of[name], fleet.specs[name].rank
    out = {}
    for module in fleet.targets[name]:
        layer = fleet.layers[module]
        out[f"{module}.A"] = layer.lora_A.grad[slot, :rank].clone()
        out[f"{module}.B"] = layer.lora_B.grad[slot, :, :rank].clone()
    return out


def test_fleet_adapter_gets_same_gradients_as_alone():
    fleet = _fleet(SPECS)
    batches = _batches(fleet.tokenizer, SPECS, [1, 2, 3])
    mixed = collate([(fleet.slot_of[n], b) for n, b in batches.items()], fleet.tokenizer.pad_token_id)
    total, _ = fleet.losses(mixed)
    total.backward()
    for spec in SPECS:
        alone = _fleet([spec])
        single = collate([(0, batches[spec.name])], alone.tokenizer.pad_token_id)
        alone.losses(single)[0].backward()
        expected, got = _grads(alone, spec.name), _grads(fleet, spec.name)
        assert expected.keys() == got.keys()
        for key in expected:
            assert expected[key].abs().max() > 0, key
            torch.testing.assert_close(got[key], expected[key], rtol=1e-10, atol=1e-12)


def test_fleet_adapter_trains_like_peft_with_torch_adamw():
    """Three steps in a mixed fleet equal PEFT + torch.optim.AdamW + clip_grad_norm_ on that adapter alone."""
    spec = SPECS[1].model_copy(update={"learning_rate": 0.05, "weight_decay": 0.1, "grad_clip": 0.5})
    fleet = _fleet([SPECS[0], spec, SPECS[2]])
    model, tok = load_base("tiny", dtype="float64")
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=spec.target_modules, lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    start = fleet.adapter_tensors(spec.name)
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            module = name.removeprefix("base_model.model.").split(".lora_")[0]
            p.data.copy_(start[f"{module}.{'A' if 'lora_A' in name else 'B'}"])
    params = [p for n, p in peft_model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=spec.weight_decay, eps=1e-8)
    streams = {s.name: DataStream(load_dataset(s.train_data, tok, 32, n=32), 2, seed=5) for s in fleet.specs.values()}
    n = fleet.n_slots
    for step in range(1, 4):
        batches = {name: stream.next_batch() for name, stream in streams.items()}
        mixed = collate([(fleet.slot_of[k], b) for k, b in batches.items()], tok.pad_token_id)
        fleet.losses(mixed)[0].backward()
        norm = fleet.optimizer.grad_sq_norms().sqrt()
        scale = torch.clamp(torch.tensor(spec.grad_clip) / (norm + 1e-6), max=1.0)
        ones = torch.ones(n, dtype=torch.float64)
        fleet.optimizer.step(ones * spec.learning_rate, ones * 0.1, ones * 0.9, ones * 0.999, ones * 1e-8,
                             ones * step, scale, ones)  # fmt: skip
        fleet.optimizer.zero_grad()
        single = collate([(0, batches[spec.name])], tok.pad_token_id)
        logits = peft_model(input_ids=single.input_ids).logits
        labels = single.labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
        opt.step()
        opt.zero_grad()
    got = fleet.adapter_tensors(spec.name)
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            module = name.removeprefix("base_model.model.").split(".lora_")[0]
            torch.testing.assert_close(got[f"{module}.{'A' if 'lora_A' in name else 'B'}"], p.detach(),
                                       rtol=1e-9, atol=1e-11)  # fmt: skip


def test_slot_adamw_leaves_inactive_slots_untouched():
    fleet = _fleet(SPECS[:2])
    layer = next(iter(fleet.layers.values()))
    before = layer.lora_A.detach().clone()
    for p in (layer.lora_A, layer.lora_B):
        p.grad = torch.ones_like(p)
    ones = torch.ones(2, dtype=torch.float64)
    SlotAdamW([layer]).step(ones, ones * 0.1, ones * 0.9, ones * 0.999, ones * 1e-8, ones, ones,
                            torch.tensor([1.0, 0.0], dtype=torch.float64))  # fmt: skip
    assert torch.equal(layer.lora_A[1], before[1])
    assert not torch.equal(layer.lora_A[0], before[0])


def _final_weights(result, name):
    return load_file(f"{result.output_dir}/adapters/{name}/final/adapter_model.safetensors")


@pytest.mark.slow
def test_adapter_joining_leaving_or_turning_nan_changes_nothing_in_the_others(kit, recorder):
    # LoRA dropout too: each adapter draws its masks from its own generator, whatever else is in the batch
    keep = [kit.adapter("a", "reverse", max_steps=6, rank=4, dropout=0.1),
            kit.adapter("b", "sort", max_steps=6, rank=8, batch_size=3)]  # fmt: skip
    plain = run_fleet(FleetSpec.model_validate(kit.fleet(*keep, dtype="float64")))
    nan = kit.adapter("c", "add", max_steps=6, learning_rate=1e200, grad_clip=None)  # overflows to inf by step 2
    leaver = kit.adapter("d", "swapcase", max_steps=6, dropout=0.2, max_seq_len=48)
    joiner = AdapterSpec.model_validate(kit.adapter("e", "add", max_steps=3, rank=2))
    misfit = AdapterSpec.model_validate(kit.adapter("f", "add", target_modules=["no_such_proj"]))  # fails at join

    class Changes:
        def on_step(self, record):
            if record.step == 2:
                submit_adapter(record.run_id, joiner)
                submit_adapter(record.run_id, misfit)
                stop_adapter(record.run_id, "d")

        def __getattr__(self, hook):
            return lambda record: None

    busy = run_fleet(FleetSpec.model_validate(kit.fleet(*keep, nan, leaver, dtype="float64")),
                     callbacks=[recorder, Changes()])  # fmt: skip
    for name in ("a", "b"):
        want, got = _final_weights(plain, name), _final_weights(busy, name)
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-12)
    changes = {(c.adapter, c.kind): c for c in recorder.of("change")}
    assert ("e", "join") in changes and ("d", "leave") in changes and ("e", "finish") in changes
    assert "target_modules" in changes[("f", "rejected")].reason and "f" not in busy.adapters
    quarantine = changes[("c", "quarantine")]
    assert not math.isfinite(quarantine.value) and "step 2" in quarantine.reason
    assert busy.adapters["c"].status == "quarantined" and busy.adapters["d"].status == "stopped"
    assert busy.adapters["a"].step == 6 and busy.adapters["e"].step == 3
    steps = recorder.of("step")
    assert [s.step for s in steps] == list(range(1, 7))
    assert {a.adapter for a in steps[3].adapters} == {"a", "b", "e"}  # fleet step 4: d left, c frozen, e joined


def test_dropout_masks_are_the_adapters_own_and_change_only_its_gradients():
    specs = [s.model_copy(update={"dropout": 0.3}) if s.name == "r4" else s for s in SPECS]
    fleet = _fleet(specs)
    batches = _batches(fleet.tokenizer, specs, [1, 2, 3])
    mixed = _mixed(fleet, batches, [s.name for s in specs])
    masks = fleet._dropout_masks(mixed, {"r4": 2})
    assert sorted(masks) == sorted(fleet.targets["r4"])
    rows = (mixed.slots == fleet.slot_of["r4"]).nonzero().flatten()
    others = (mixed.slots != fleet.slot_of["r4"]).nonzero().flatten()
    for mask in masks.values():
        assert torch.all(mask[others] == 1)
        dropped = (mask[rows] == 0).double().mean().item()
        assert 0.25 < dropped < 0.35
    again = fleet._dropout_masks(_mixed(fleet, batches, ["r4"]), {"r4": 2})  # alone: the same masks
    for name, mask in masks.items():
        torch.testing.assert_close(again[name][:, : mask.shape[1]], mask[rows][:, : again[name].shape[1]])
    assert not torch.equal(fleet._dropout_masks(mixed, {"r4": 3})[name], mask)  # the next step draws anew

    without = _fleet(SPECS)
    for f in (fleet, without):
        f.losses(_mixed(f, batches, [s.name for s in specs]), {"r4": 2})[0].backward()
    with_grads, without_grads = _all_grads(fleet), _all_grads(without)
    for key in with_grads:
        same = torch.allclose(with_grads[key], without_grads[key], rtol=1e-10, atol=1e-12)
        assert same == (not key.startswith("r4/")), key


# -- the memory-saving paths: ungathered weights when every slot is in the batch once, recomputed activations --
def _mixed(fleet, batches, order):
    return collate([(fleet.slot_of[name], batches[name]) for name in order], fleet.tokenizer.pad_token_id)


def _all_grads(fleet):
    return {f"{name}/{key}": g for name in fleet.slot_of for key, g in _grads(fleet, name).items()}


def _watch(fleet) -> list[bool]:
    """One entry per call of one wrapped layer (forward or backward replay): whether it took the ungathered path."""
    calls: list[bool] = []
    layer = next(iter(fleet.layers.values()))
    layer.register_forward_hook(lambda module, args, out: calls.append(module.routing.every_slot))
    return calls


def _assert_same(got, expected):
    assert got.keys() == expected.keys()
    for key in expected:
        assert expected[key].abs().max() > 0, key
        torch.testing.assert_close(got[key], expected[key], rtol=1e-10, atol=1e-12)


def test_every_slot_once_uses_the_weights_ungathered_with_the_same_gradients():
    in_order, reordered = _fleet(SPECS), _fleet(SPECS)
    batches = _batches(in_order.tokenizer, SPECS, [2, 2, 2])
    names = [s.name for s in SPECS]
    direct = _mixed(in_order, batches, names)
    in_order_calls, reordered_calls = _watch(in_order), _watch(reordered)
    in_order.losses(direct)[0].backward()
    assert in_order.routing.idx is None  # cleared after the forward
    gathered = _mixed(reordered, batches, names[::-1])  # slots 2, 1, 0: gathered per group
    reordered.losses(gathered)[0].backward()
    assert in_order_calls == [True] and reordered_calls == [False]
    _assert_same(_all_grads(in_order), _all_grads(reordered))


@pytest.mark.parametrize("sizes", [[1, 2, 3], [2, 2, 2]])
def test_recomputed_activations_give_the_same_gradients_with_dropout(sizes):
    specs = [s.model_copy(update={"dropout": 0.3}) if s.name == "r4" else s for s in SPECS]
    plain, recomputed = _fleet(specs), _fleet(specs)
    recomputed.recompute_activations()
    batches = _batches(plain.tokenizer, specs, sizes)
    plain_calls, recomputed_calls = _watch(plain), _watch(recomputed)
    for fleet in (plain, recomputed):  # the replay must apply the step's masks again
        fleet.losses(_mixed(fleet, batches, [s.name for s in specs]), {"r4": 5})[0].backward()
    assert len(plain_calls) == 1 and len(recomputed_calls) == 2  # the block ran again in backward
    _assert_same(_all_grads(recomputed), _all_grads(plain))


def test_recompute_covers_gpt2_conv1d_blocks(tmp_path):
    tok = build_byte_tokenizer()
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    GPT2LMHeadModel(config).to(torch.float64).save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    spec = AdapterSpec(name="g", family="f", rank=4, alpha=8, train_data="task:reverse", max_steps=1)
    fleets = []
    for recompute in (False, True):
        model, tok = load_base(str(tmp_path / "gpt2"), dtype="float64")
        fleet = Fleet(model, tok)
        fleet.add(spec, seed=1)
        if recompute:
            fleet.recompute_activations()
        fleet.load_adapter_tensors("g", {k: torch.full_like(v, 0.01) for k, v in fleet.adapter_tensors("g").items()})
        fleets.append(fleet)
    batches = _batches(tok, [spec], [3])
    calls = [_watch(fleet) for fleet in fleets]
    for fleet in fleets:
        fleet.losses(_mixed(fleet, batches, ["g"]))[0].backward()
    assert [len(c) for c in calls] == [1, 2]
    _assert_same(_all_grads(fleets[1]), _all_grads(fleets[0]))


def test_a_fleet_trained_with_recompute_ends_with_the_same_weights(kit):
    results = []
    for recompute in (False, True):
        raw = kit.fleet(kit.adapter("a", max_steps=3), kit.adapter("b", "sort", rank=2, max_steps=3),
                        name=f"rc{int(recompute)}", recompute_activations=recompute, dtype="float64")  # fmt: skip
        results.append(run_fleet(FleetSpec.model_validate(raw)))
    for name in ("a", "b"):
        plain, recomputed = (
            load_file(f"{r.adapters[name].final_checkpoint}/adapter_model.safetensors") for r in results
        )
        assert plain.keys() == recomputed.keys()
        for key in plain:
            torch.testing.assert_close(recomputed[key], plain[key], rtol=1e-9, atol=1e-12)


def test_a_command_seen_again_between_state_saves_is_applied_once(kit, recorder, lorafleet_home):
    """A command file stays in the queue until a saved state covers it, and the loop reads the queue every step.
    A submit of a name the fleet already has (as after a resume) changes nothing, so no save is forced."""
    spec = kit.fleet(kit.adapter("a", max_steps=12), state_every=5)
    again = {"action": "submit", "adapter": AdapterSpec.model_validate(spec["adapters"][0]).model_dump(mode="json")}

    class Resubmit:
        def on_step(self, record):
            if record.step == 1:  # emitted with the save at step 5; read again at steps 6-9, marked at 10
                control._enqueue(record.run_id, again)

        def __getattr__(self, hook):
            return lambda record: None

    result = run_fleet(FleetSpec.model_validate(spec), callbacks=[recorder, Resubmit()])
    assert result.status == "finished" and result.adapters["a"].step == 12
    queue = lorafleet_home / "runs" / result.run_id / "control"
    assert len(list((queue / "done").iterdir())) == 1 and not list(queue.glob("*.json"))
    assert [s.step for s in recorder.of("step")] == list(range(1, 13))

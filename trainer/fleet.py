"""Injection of multi-LoRA layers into a base model, per-adapter losses, and PEFT-format save/load.

Like PEFT's LoraModel this module only injects and exports; loop.py trains.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lorafleet.errors import BadInput
from lorafleet.trainer.config import AdapterSpec
from lorafleet.trainer.data import Batch
from lorafleet.trainer.layer import MultiLoraLinear, Routing, SlotAdamW, features, is_supported, recompute_blocks

STATE_KEYS = ("A", "B", "m_A", "v_A", "m_B", "v_B")


class Fleet:
    """A frozen base model whose targeted layers serve many adapters at once, one slot each."""

    def __init__(self, model, tokenizer, base_model_id: str = ""):
        self.model, self.tokenizer, self.base_model_id = model, tokenizer, base_model_id
        param = next(model.parameters())
        self.device = param.device
        self.lora_dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
        self.routing = Routing()
        output = model.get_output_embeddings()
        self.candidates = {
            name: module
            for name, module in model.named_modules()
            if is_supported(module) and module is not output and not isinstance(module, MultiLoraLinear)
        }
        self.layers: dict[str, MultiLoraLinear] = {}
        self.slot_of: dict[str, int] = {}
        self.specs: dict[str, AdapterSpec] = {}
        self.targets: dict[str, list[str]] = {}
        self.seeds: dict[str, int] = {}
        self.optimizer = SlotAdamW([])

    # -- adapters -----------------------------------------------------------------------------------------------
    def resolve_targets(self, spec: AdapterSpec) -> list[str]:
        """The module names this adapter targets; BadInput when none match or the rank exceeds a layer's width."""
        names = _match(spec.target_modules, list(self.candidates))
        if not names:
            raise BadInput(
                f"adapter {spec.name}: target_modules: {spec.target_modules!r} matches no Linear/Conv1D module "
                f"(have e.g. {sorted({n.rsplit('.', 1)[-1] for n in self.candidates})})"
            )
        for name in names:
            width = min(features(self.candidates[name]))
            if spec.rank > width:
                raise BadInput(f"adapter {spec.name}: rank: {spec.rank} exceeds the width {width} of layer {name}")
        return names

    def add(self, spec: AdapterSpec, seed: int) -> int:
        targets = self.resolve_targets(spec)
        used = set(self.slot_of.values())
        slot = next(i for i in range(len(used) + 1) if i not in used)
        for name in targets:
            self._wrap(name)
        slots = max([slot + 1] + [layer.slots for layer in self.layers.values()])
        generator = torch.Generator().manual_seed(seed)
        for name, layer in self.layers.items():
            layer.resize(slots, spec.rank)
            layer.init_slot(slot, spec.rank, spec.scaling if name in targets else 0.0, generator)
        self.optimizer.layers = list(self.layers.values())
        self.slot_of[spec.name], self.specs[spec.name], self.targets[spec.name] = slot, spec, targets
        self.seeds[spec.name] = seed
        return slot

    def remove(self, name: str) -> None:
        """Free an adapter's slot; its weights stay until another adapter reuses the slot."""
        slot = self.slot_of.pop(name)
        for layer in self.layers.values():
            layer.scaling[slot] = 0.0
        del self.specs[name], self.targets[name], self.seeds[name]

    def _wrap(self, name: str) -> None:
        if name in self.layers:
            return
        parent_name, _, child = name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        layer = MultiLoraLinear(self.candidates[name], self.routing, self.lora_dtype, name)
        setattr(parent, child, layer)
        self.layers[name] = layer

    def recompute_activations(self) -> None:
        if not recompute_blocks(self.model, self.routing):
            name = type(self.model).__name__
            raise BadInput(f"recompute_activations: {name} has no transformers blocks to recompute")

    @property
    def n_slots(self) -> int:
        return max((layer.slots for layer in self.layers.values()), default=0)

    # -- forward ------------------------------------------------------------------------------------------------
    def losses(self, batch: Batch, steps: dict[str, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of per-adapter mean losses, per-slot mean loss (S,)). Summing keeps each adapter's gradient its own.

        `steps`: each adapter's own step count, which with its seed picks its dropout masks (0 when absent)."""
        groups = batch.slots[:: batch.group_size]
        self.routing.set(groups, self._dropout_masks(batch, steps or {}), self.n_slots)
        try:
            logits = self.model(input_ids=batch.input_ids, use_cache=False).logits
        finally:
            self.routing.set(None)
        labels = batch.labels[:, 1:]
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), reduction="none", ignore_index=-100)
        per_seq = ce.view(labels.shape).sum(1)
        counts = (labels != -100).sum(1).to(per_seq.dtype)
        n = self.n_slots
        slot_sum = per_seq.new_zeros(n).index_add(0, batch.slots, per_seq)
        slot_count = counts.new_zeros(n).index_add(0, batch.slots, counts)
        per_slot = slot_sum / slot_count.clamp(min=1)
        return per_slot[slot_count > 0].sum(), per_slot.detach()

    def _dropout_masks(self, batch: Batch, steps: dict[str, int]) -> dict[str, torch.Tensor] | None:
        """Each layer's LoRA-dropout mask for the batch, or None when no adapter in it has dropout.

        An adapter's masks come from its own generator, seeded by its seed and step, in a shape set by its own
        max_seq_len: they do not depend on which other adapters share the batch (joins and leaves change nothing)
        nor on the padding, and a resumed run draws them again exactly."""
        rows_of: dict[int, list[int]] = {}
        for row, slot in enumerate(batch.slots.tolist()):
            rows_of.setdefault(slot, []).append(row)
        droppers = [n for n, slot in self.slot_of.items() if self.specs[n].dropout > 0 and slot in rows_of]
        if not droppers:
            return None
        n_rows, tokens = batch.input_ids.shape
        masks: dict[str, torch.Tensor] = {}
        for name in droppers:
            spec, rows, layers = self.specs[name], rows_of[self.slot_of[name]], sorted(self.targets[name])
            widths = [self.layers[layer].in_features for layer in layers]
            seed = self.seeds[name] * 1_000_003 + steps.get(name, 0)
            generator = torch.Generator(device=self.device).manual_seed(seed)
            keep = torch.rand((len(rows), spec.max_seq_len, sum(widths)), generator=generator, device=self.device)
            drawn = (keep[:, :tokens] >= spec.dropout).to(self.lora_dtype) / (1 - spec.dropout)
            drawn = F.pad(drawn, (0, 0, 0, tokens - drawn.shape[1]), value=1.0)  # tokens past its max_seq_len
            for layer, mask in zip(layers, drawn.split(widths, dim=-1), strict=True):
                full = masks.get(layer)
                if full is None:
                    full = masks[layer] = torch.ones(n_rows, tokens, mask.shape[-1], dtype=self.lora_dtype,
                                                     device=self.device)  # fmt: skip
                full[rows] = mask
        return masks

    def logits(self, input_ids: torch.Tensor, adapter: str | None, **kwargs) -> torch.Tensor:
        """Logits with one adapter active for every row (or none), no grad."""
        with torch.no_grad(), self.active(adapter, input_ids.shape[0]):
            return self.model(input_ids=input_ids, use_cache=False, **kwargs).logits

    @contextmanager
    def active(self, adapter: str | None, rows: int) -> Iterator[None]:
        """Every one of `rows` sequences uses `adapter` (None: the bare base) inside the block."""
        idx = None if adapter is None else torch.full((rows,), self.slot_of[adapter], device=self.device)
        self.routing.set(idx)
        try:
            yield
        finally:
            self.routing.set(None)

    # -- weights and state ------------------------------------------------------------------------------------
    def adapter_tensors(self, name: str, with_moments: bool = False) -> dict[str, torch.Tensor]:
        """Copies of the adapter's A and B (PEFT shapes) per targeted module, and its AdamW moments if asked."""
        return {key: view.clone() for key, view in self._slot_views(name, with_moments)}

    def _slot_views(self, name: str, with_moments: bool) -> Iterator[tuple[str, torch.Tensor]]:
        slot, rank = self.slot_of[name], self.specs[name].rank
        for module in self.targets[name]:
            layer = self.layers[module]
            a, b = layer.slot_weights(slot, rank)
            yield f"{module}.A", a
            yield f"{module}.B", b
            if with_moments:
                for key in STATE_KEYS[2:]:
                    t = layer.state[key][slot]
                    yield f"{module}.{key}", (t[:rank] if key.endswith("A") else t[:, :rank])

    def packed_state(self, name: str) -> dict:
        """The adapter's weights and AdamW moments as one flat tensor plus its layout: trainer state saves in one
        piece per adapter (pickling thousands of small tensors every step cost more than the step itself)."""
        views = list(self._slot_views(name, with_moments=True))
        layout = [(key, tuple(view.shape)) for key, view in views]
        return {"flat": torch.cat([view.reshape(-1) for _, view in views]), "layout": layout}

    def load_packed_state(self, name: str, packed: dict) -> None:
        sizes = [math.prod(shape) for _, shape in packed["layout"]]
        parts = packed["flat"].split(sizes)
        self.load_adapter_tensors(
            name, {k: p.view(shape) for (k, shape), p in zip(packed["layout"], parts, strict=True)}
        )

    @torch.no_grad()
    def load_adapter_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        slot, spec = self.slot_of[name], self.specs[name]
        for module in self.targets[name]:
            layer = self.layers[module]
            layer.set_slot(slot, tensors[f"{module}.A"], tensors[f"{module}.B"], spec.scaling)
            for key in STATE_KEYS[2:]:
                if f"{module}.{key}" in tensors:
                    t = tensors[f"{module}.{key}"]
                    target = layer.state[key][slot]
                    target.zero_()
                    (target[: t.shape[0]] if key.endswith("A") else target[:, : t.shape[1]]).copy_(t)

    def save_peft(self, name: str, directory: Path, meta: dict | None = None) -> Path:
        """Write a PEFT LoRA adapter directory atomically (temp dir, then rename); `meta` goes to lorafleet.json."""
        from peft import LoraConfig

        spec, targets = self.specs[name], self.targets[name]
        tensors = self.adapter_tensors(name)
        state = {}
        for module in targets:
            state[f"base_model.model.{module}.lora_A.weight"] = tensors[f"{module}.A"].contiguous()
            state[f"base_model.model.{module}.lora_B.weight"] = tensors[f"{module}.B"].contiguous()
        config = LoraConfig(
            r=spec.rank,
            lora_alpha=spec.alpha,
            lora_dropout=spec.dropout,
            target_modules=peft_target_modules(targets, list(self.candidates)),
            fan_in_fan_out=any(self.layers[m].is_conv1d for m in targets),
            bias="none",
            task_type="CAUSAL_LM",
            base_model_name_or_path=self.base_model_id,
        )
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = directory.with_name(f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        config.save_pretrained(str(tmp))
        save_file(state, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        if meta is not None:
            (tmp / "lorafleet.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        _fsync_dir(tmp)
        replace_dir(tmp, directory)
        return directory

    def load_peft(self, name: str, directory: Path) -> None:
        """Load a PEFT adapter directory (one this fleet wrote) into an existing slot."""
        state = load_file(str(Path(directory) / "adapter_model.safetensors"))
        tensors = {}
        for key, value in state.items():
            module, _, kind = key.removeprefix("base_model.model.").rpartition(".lora_")
            tensors[f"{module}.{kind[0]}"] = value.to(self.lora_dtype)
        self.load_adapter_tensors(name, tensors)


def _match(target: str | list[str], names: list[str]) -> list[str]:
    if target == "all-linear":
        return list(names)
    if isinstance(target, str):
        return [n for n in names if re.fullmatch(target, n)]
    return [n for n in names if any(n == t or n.endswith("." + t) for t in target)]


def peft_target_modules(targets: list[str], candidates: list[str]) -> list[str] | str:
    """PEFT's target_modules that selects exactly `targets`: suffix names when they suffice, else a regex."""
    suffixes = sorted({t.rsplit(".", 1)[-1] for t in targets})
    if set(_match(suffixes, candidates)) == set(targets):
        return suffixes
    return "(?:" + "|".join(re.escape(t) for t in sorted(targets)) + ")"


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished temp directory into place; a reader sees the old or the new one, never a mix."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    for file in path.iterdir():
        with file.open("rb") as fh:
            os.fsync(fh.fileno())


def write_json_atomic(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)

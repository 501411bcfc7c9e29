"""Per-adapter evals: held-out loss and perplexity, and task metrics on greedy generations with that adapter active.

Metrics are plain functions `(output, reference) -> float`; add one with `register_metric` before loading a spec.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lorafleet.trainer.data import Dataset, collate

Metric = Callable[[str, str], float]


def exact_match(output: str, reference: str) -> float:
    return float(output.strip() == reference.strip())


def char_accuracy(output: str, reference: str) -> float:
    """Fraction of positions that agree, over the longer of the two strings."""
    out, ref = output.strip(), reference.strip()
    width = max(len(out), len(ref))
    return 1.0 if width == 0 else sum(a == b for a, b in zip(out, ref, strict=False)) / width


METRICS: dict[str, Metric] = {"exact_match": exact_match, "char_accuracy": char_accuracy}


def register_metric(name: str, fn: Metric) -> None:
    METRICS[name] = fn


@dataclass
class SuiteResult:
    suite: str
    metrics: dict[str, float]
    examples: list[dict]  # example_id, prompt, reference, output, scores


def evaluate(fleet, adapter: str, suite: str, data: Dataset, metrics: list[str], n: int, batch_size: int):
    examples = data.examples[:n]
    loss = held_out_loss(fleet, adapter, examples, batch_size)
    result = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    rows = []
    if metrics and examples[0].prompt:
        outputs = generate(
            fleet, adapter, [ex.prompt for ex in examples], [ex.reference for ex in examples], batch_size
        )
        for ex, out in zip(examples, outputs, strict=True):
            scores = {m: METRICS[m](out, ex.reference) for m in metrics}
            rows.append(
                dict(example_id=ex.example_id, prompt=ex.prompt, reference=ex.reference, output=out, scores=scores)
            )
        for m in metrics:
            result[m] = sum(r["scores"][m] for r in rows) / len(rows)
    return SuiteResult(suite, result, rows)


def held_out_loss(fleet, adapter: str, examples, batch_size: int) -> float:
    """Mean loss per completion token over the examples (not a mean of batch means)."""
    total, count = 0.0, 0
    pad = fleet.tokenizer.pad_token_id
    for i in range(0, len(examples), batch_size):
        batch = collate([(0, examples[i : i + batch_size])], pad, str(fleet.device))
        logits = fleet.logits(batch.input_ids, adapter)
        labels = batch.labels[:, 1:]
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(), reduction="sum")
        total += ce.item()
        count += int((labels != -100).sum())
    return total / max(count, 1)


def generate(fleet, adapter: str, prompts: list[str], references: list[str], batch_size: int) -> list[str]:
    """Greedy decoding with KV cache, prompts left-padded; stops at EOS or a little past the longest reference."""
    tok = fleet.tokenizer
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    encoded = [bos + tok.encode(p, add_special_tokens=False) for p in prompts]
    max_new = max(len(tok.encode(r, add_special_tokens=False)) for r in references) + 2
    outputs: list[str] = []
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i : i + batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(c)) + c for c in chunk], device=fleet.device)
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk], device=fleet.device)
        with torch.no_grad(), fleet.active(adapter, len(chunk)):
            out = fleet.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        for row in out[:, width:].tolist():
            if tok.eos_token_id in row:
                row = row[: row.index(tok.eos_token_id)]
            outputs.append(tok.decode(row, skip_special_tokens=True))
    return outputs

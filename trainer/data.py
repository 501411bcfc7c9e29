"""Training and eval data: JSONL files ({"prompt","completion"} or {"text"}) and built-in synthetic tasks.

Bad rows are counted and reported with file and line; a data set is fatal only when nothing usable is left.
Each adapter has its own stream: a fresh seeded permutation per epoch and a cursor that resumes exactly.
"""

from __future__ import annotations

import hashlib
import json
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lorafleet.errors import BadInput
from lorafleet.trainer.config import TASK_PREFIX

TASK_VERSION = 1  # bump when a generator changes, so dataset hashes change with it
LETTERS = "abcdefgh"


def _letters(rng: random.Random, alphabet: str = LETTERS) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 4)))


def _task_pair(task: str, rng: random.Random) -> tuple[str, str]:
    if task == "reverse":
        s = _letters(rng)
        return s, s[::-1]
    if task == "sort":
        s = _letters(rng)
        return s, "".join(sorted(s))
    if task == "add":
        a, b = rng.randint(0, 14), rng.randint(0, 14)
        return f"{a}+{b}", str(a + b)
    if task == "swapcase":
        s = _letters(rng, LETTERS + LETTERS.upper())
        return s, s.swapcase()
    raise BadInput(f"unknown built-in task {task!r}")


TASK_PROMPT = "{}="  # adapters see no task name; tiny-tasks pre-training saw "<task> x=y", so adapters must learn it


def is_held_out(prompt: str) -> bool:
    """A fixed fifth of every task's prompts is held out: eval rows can never appear in training."""
    return zlib.crc32(prompt.encode()) % 5 == 0


def task_examples(task: str, n: int, seed: int, split: str = "train") -> list[dict]:
    """Up to `n` distinct {"prompt","completion"} rows of a built-in task from the given split."""
    rng = random.Random(f"{task}:{seed}:{split}")
    rows, seen = [], set()
    for _ in range(n * 50):
        x, y = _task_pair(task, rng)
        prompt = TASK_PROMPT.format(x)
        if prompt not in seen and is_held_out(prompt) == (split == "eval"):
            seen.add(prompt)
            rows.append({"prompt": prompt, "completion": y})
            if len(rows) == n:
                break
    return rows


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # -100 where no loss is taken (prompt tokens)
    prompt: str = ""
    reference: str = ""
    example_id: str = ""


@dataclass
class Dataset:
    source: str
    examples: list[Example]
    sha256: str
    bad_rows: list[str] = field(default_factory=list)  # "file:line: reason"


def encode(tokenizer, prompt: str, completion: str, max_len: int) -> tuple[list[int], list[int]] | None:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    p = bos + tokenizer.encode(prompt, add_special_tokens=False) if prompt else bos
    c = tokenizer.encode(completion, add_special_tokens=False) + [tokenizer.eos_token_id]
    ids = (p + c)[:max_len]
    labels = ([-100] * len(p) + c)[:max_len]
    if not prompt:  # {"text"} rows: loss on every token after the first
        labels = [-100] + ids[1:]
    if all(label == -100 for label in labels[1:]):
        return None
    return ids, labels


def _read_jsonl(path: Path) -> tuple[list[tuple[int, dict]], list[str]]:
    rows, bad = [], []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                bad.append(f"{path}:{lineno}: not JSON ({exc.msg})")
                continue
            reason = _row_problem(row)
            if reason:
                bad.append(f"{path}:{lineno}: {reason}")
            else:
                rows.append((lineno, row))
    return rows, bad


def _row_problem(row: object) -> str:
    if not isinstance(row, dict):
        return "not a JSON object"
    if "text" in row and "completion" not in row:
        return "" if isinstance(row["text"], str) and row["text"] else "'text' must be a non-empty string"
    if not isinstance(row.get("prompt"), str):
        return "needs 'prompt' and 'completion' strings, or 'text'"
    if not isinstance(row.get("completion"), str) or not row["completion"]:
        return "'completion' must be a non-empty string"
    return ""


def load_dataset(ref: str, tokenizer, max_len: int, *, n: int = 4096, seed: int = 0, split: str = "train") -> Dataset:
    """Load a JSONL file or generate a built-in task; raise BadInput when no usable row is left."""
    if ref.startswith(TASK_PREFIX):
        return _task_dataset(ref[len(TASK_PREFIX) :], tokenizer, max_len, n, seed, split)
    path = Path(ref)
    if not path.is_file():
        raise BadInput(f"data file not found: {ref}")
    rows, bad = _read_jsonl(path)
    examples = []
    for lineno, row in rows:
        prompt, completion = (row["prompt"], row["completion"]) if "completion" in row else ("", row["text"])
        encoded = encode(tokenizer, prompt, completion, max_len)
        if encoded is None:
            bad.append(f"{path}:{lineno}: no completion token left within max_seq_len={max_len}")
            continue
        examples.append(Example(*encoded, prompt=prompt, reference=completion, example_id=f"{path.name}:{lineno}"))
    if not examples:
        raise BadInput(f"{path}: no usable rows ({len(bad)} bad" + (f"; first: {bad[0]}" if bad else "") + ")")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return Dataset(str(path), examples, sha, bad)


class DatasetCache:
    """Loads datasets for one fleet; adapters reading the same JSONL file at the same max_seq_len (a sweep over
    hyper-parameters, typically) share one tokenized copy. Built-in tasks are seeded per adapter: not shared."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._files: dict[tuple, Dataset] = {}

    def load(self, ref: str, max_len: int, *, n: int = 4096, seed: int = 0, split: str = "train") -> Dataset:
        path = Path(ref)
        if ref.startswith(TASK_PREFIX) or not path.is_file():
            return load_dataset(ref, self.tokenizer, max_len, n=n, seed=seed, split=split)
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, max_len)
        if key not in self._files:
            self._files[key] = load_dataset(ref, self.tokenizer, max_len, n=n, seed=seed, split=split)
        return self._files[key]


def _task_dataset(task: str, tokenizer, max_len: int, n: int, seed: int, split: str) -> Dataset:
    rows = task_examples(task, n, seed, split)
    examples = []
    for i, row in enumerate(rows):
        encoded = encode(tokenizer, row["prompt"], row["completion"], max_len)
        if encoded:
            examples.append(Example(*encoded, **row_fields(row), example_id=f"{task}-{split}-{i}"))
    if not examples:
        raise BadInput(f"task:{task}: no example fits max_seq_len={max_len}")
    ident = json.dumps({"task": task, "n": n, "seed": seed, "split": split, "version": TASK_VERSION}, sort_keys=True)
    return Dataset(TASK_PREFIX + task, examples, hashlib.sha256(ident.encode()).hexdigest())


def row_fields(row: dict) -> dict:
    return {"prompt": row["prompt"], "reference": row["completion"]}


class DataStream:
    """An adapter's endless stream of batches: seeded permutation per epoch, resumable cursor."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.dataset.examples), generator=g).tolist()

    def next_batch(self) -> list[Example]:
        batch = []
        while len(batch) < self.batch_size:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            batch.append(self.dataset.examples[self._order[self.position]])
            self.position += 1
        return batch

    def cursor(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, cursor: dict) -> None:
        self.epoch, self.position = cursor["epoch"], cursor["position"]
        self._order = self._permutation()


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T), right-padded: causal attention never lets real tokens see the padding
    labels: torch.Tensor  # (B, T), -100 on prompt and padding
    slots: torch.Tensor  # (B,) slot of each sequence
    tokens: dict[int, int]  # slot -> real tokens in this batch
    sequences: dict[int, int]  # slot -> sequences
    group_size: int = 1  # sequences per routing group: the per-adapter count when all adapters bring the same


def collate(groups: list[tuple[int, list[Example]]], pad_id: int, device: str = "cpu") -> Batch:
    seqs = [(slot, ex) for slot, examples in groups for ex in examples]
    width = max(len(ex.input_ids) for _, ex in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    tokens: dict[int, int] = {}
    for row, (slot, ex) in enumerate(seqs):
        ids[row, : len(ex.input_ids)] = torch.tensor(ex.input_ids)
        labels[row, : len(ex.labels)] = torch.tensor(ex.labels)
        tokens[slot] = tokens.get(slot, 0) + len(ex.input_ids)
    slots = torch.tensor([slot for slot, _ in seqs], dtype=torch.long)
    sequences = {slot: len(examples) for slot, examples in groups}
    counts = set(sequences.values())
    group_size = counts.pop() if len(counts) == 1 and len(sequences) == len(groups) else 1
    return Batch(ids.to(device), labels.to(device), slots.to(device), tokens, sequences, group_size)

"""Data: JSONL rows, bad rows with file:line, built-in tasks, resumable streams; the pure LR schedule."""

from __future__ import annotations

import json

import pytest

from lorafleet.errors import BadInput
from lorafleet.trainer import AdapterSpec, lr_at
from lorafleet.trainer.base import build_byte_tokenizer
from lorafleet.trainer.config import BUILTIN_TASKS
from lorafleet.trainer.data import DatasetCache, DataStream, collate, is_held_out, load_dataset, task_examples

TOK = build_byte_tokenizer()


def test_bad_rows_are_counted_with_file_and_line(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = ['{"prompt": "a>", "completion": "b"}', "{not json", '{"prompt": "x"}', "", '{"text": "free text"}',
            '["list"]', '{"prompt": "p", "completion": ""}']  # fmt: skip
    path.write_text("\n".join(rows) + "\n")
    data = load_dataset(str(path), TOK, 32)
    assert len(data.examples) == 2
    assert [b.split(": ")[0] for b in data.bad_rows] == [f"{path}:2", f"{path}:3", f"{path}:6", f"{path}:7"]


def test_loss_is_taken_on_completion_tokens_only(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "abc>", "completion": "cba"}) + "\n" + json.dumps({"text": "xyz"}) + "\n")
    pc, text = load_dataset(str(path), TOK, 32).examples
    assert pc.labels == [-100] * 5 + [TOK.encode(ch, add_special_tokens=False)[0] for ch in "cba"] + [TOK.eos_token_id]
    assert text.labels[0] == -100 and text.labels[1:] == text.input_ids[1:]


def test_rows_too_long_for_max_seq_len_are_bad_and_all_bad_is_fatal(tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"prompt": "p" * 40, "completion": "c"}) + "\n")
    with pytest.raises(BadInput, match="no usable rows"):
        load_dataset(str(path), TOK, 16)


@pytest.mark.parametrize("task", BUILTIN_TASKS)
def test_builtin_tasks_are_deterministic_correct_and_held_out(task):
    rows = task_examples(task, 50, seed=1)
    assert rows == task_examples(task, 50, seed=1) and len({r["prompt"] for r in rows}) == 50
    assert not any(is_held_out(r["prompt"]) for r in rows)
    held_out = load_dataset(f"task:{task}", TOK, 32, n=50, seed=1, split="eval")
    assert not {ex.prompt for ex in held_out.examples} & {r["prompt"] for r in rows}
    x, y = rows[0]["prompt"][:-1], rows[0]["completion"]
    expected = {"reverse": x[::-1], "sort": "".join(sorted(x)), "swapcase": x.swapcase()}.get(task)
    assert y == (expected if expected is not None else str(eval(x)))  # noqa: S307 - "a+b" of our own digits


def test_adapters_reading_one_file_share_one_tokenized_copy_until_it_changes(tmp_path):
    path = tmp_path / "sweep.jsonl"
    path.write_text('{"prompt": "a>", "completion": "b"}\n')
    cache = DatasetCache(TOK)
    first = cache.load(str(path), 32)
    assert cache.load(str(path), 32) is first
    assert cache.load(str(path), 16) is not first  # another max_seq_len tokenizes differently
    assert cache.load("task:reverse", 32, n=8, seed=1) is not cache.load("task:reverse", 32, n=8, seed=1)
    path.write_text('{"prompt": "a>", "completion": "bc"}\n{"text": "more"}\n')
    changed = cache.load(str(path), 32)
    assert changed is not first and len(changed.examples) == 2


def test_stream_resumes_from_its_cursor_across_epochs():
    data = load_dataset("task:sort", TOK, 32, n=10)
    a = DataStream(data, 3, seed=4)
    first = [a.next_batch() for _ in range(5)]  # crosses an epoch boundary
    b = DataStream(data, 3, seed=4)
    b.restore(a.cursor())
    assert [ex.example_id for ex in a.next_batch()] == [ex.example_id for ex in b.next_batch()]
    assert len({ex.example_id for batch in first[:3] for ex in batch[:3]}) >= 9


def test_collate_right_pads_and_groups_equal_adapters():
    data = load_dataset("task:add", TOK, 32, n=8)
    batch = collate([(0, data.examples[:2]), (3, data.examples[2:4])], TOK.pad_token_id)
    assert batch.group_size == 2 and batch.slots.tolist() == [0, 0, 3, 3]
    uneven = collate([(0, data.examples[:1]), (1, data.examples[1:3])], TOK.pad_token_id)
    assert uneven.group_size == 1 and uneven.sequences == {0: 1, 1: 2}


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    spec = AdapterSpec(name="a", family="f", train_data="task:add", learning_rate=1.0, warmup_steps=4,
                       max_steps=104, schedule="cosine", min_lr_ratio=0.1)  # fmt: skip
    assert [lr_at(s, spec) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(54, spec) == pytest.approx(0.55)
    assert lr_at(104, spec) == pytest.approx(0.1)
    assert lr_at(30, spec.model_copy(update={"schedule": "constant"})) == 1.0
    assert lr_at(54, spec.model_copy(update={"schedule": "linear"})) == pytest.approx(0.55)

"""Bad fleet specs through the real CLI: exit 2, a message naming the field (and file), nothing under runs/."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from lorafleet.ui.cli import app


def _case(kit, tmp_path, change):
    data = kit.fleet(kit.adapter("a"), kit.adapter("b", "sort"))
    change(data, tmp_path)
    return data


def _set(path, value):
    def change(data, tmp_path):
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def _file(name, text):
    def change(data, tmp_path):
        (tmp_path / name).write_text(text)
        data["adapters"][0]["train_data"] = name

    return change


CASES = {
    "unknown_top_level_key": (_set(["epochs"], 3), "epochs: unknown key"),
    "unknown_adapter_key": (_set(["adapters", 0, "rnak"], 4), "adapters[0] (a).rnak: unknown key"),
    "negative_rank": (_set(["adapters", 0, "rank"], -4), "adapters[0] (a).rank"),
    "zero_batch_size": (_set(["adapters", 1, "batch_size"], 0), "adapters[1] (b).batch_size"),
    "missing_data_file": (_set(["adapters", 0, "train_data"], "nope.jsonl"), "train_data: data file not found"),
    "duplicate_names": (_set(["adapters", 1, "name"], "a"), "duplicate adapter name 'a'"),
    "name_with_slash": (_set(["adapters", 0, "name"], "a/b"), "adapters[0] (a/b).name"),
    "name_with_quote": (_set(["adapters", 0, "name"], "it's"), "adapters[0] (it's).name"),
    "family_with_space": (_set(["adapters", 0, "family"], "my family"), "adapters[0] (a).family"),
    "rank_above_layer_width": (_set(["adapters", 0, "rank"], 4096), "rank: 4096 exceeds the width"),
    "empty_dataset": (_file("empty.jsonl", ""), "no usable rows"),
    "only_bad_rows": (_file("bad.jsonl", '{"prompt": 1}\nnot json\n'), "bad.jsonl:1"),
    "unknown_task": (_set(["adapters", 0, "train_data"], "task:juggle"), "adapters[0] (a).train_data"),
    "unknown_metric": (_set(["adapters", 0, "eval_metrics"], ["bleu9"]), "adapters[0] (a).eval_metrics"),
    "no_length": (_set(["adapters", 0, "max_steps"], None), "set max_steps or epochs"),
    "dropout_one": (_set(["adapters", 0, "dropout"], 1.0), "adapters[0] (a).dropout"),
    "targets_match_nothing": (_set(["adapters", 0, "target_modules"], ["qkv_nope"]), "target_modules"),
    "bad_regex_target": (_set(["adapters", 0, "target_modules"], "(q_proj"), "not a valid regular expression"),
    "lr_not_a_number": (_set(["adapters", 0, "learning_rate"], "fast"), "adapters[0] (a).learning_rate"),
    "no_adapters": (_set(["adapters"], []), "adapters: List should have at least 1 item"),
    "bad_dtype": (_set(["dtype"], "float8"), "dtype"),
    "warmup_beyond_steps": (_set(["adapters", 0, "warmup_steps"], 10), "warmup_steps (10) exceeds max_steps (4)"),
    "bad_fleet_name": (_set(["name"], "../x"), "name"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_spec_exits_2_naming_the_field(case, kit, tmp_path, lorafleet_home):
    change, expected = CASES[case]
    spec = kit.write(tmp_path / "fleet.yaml", _case(kit, tmp_path, change))
    result = CliRunner().invoke(app, ["train", str(spec), "--no-telemetry"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert expected in message
    assert not (lorafleet_home / "runs").exists() or not any((lorafleet_home / "runs").iterdir())


@pytest.mark.parametrize(
    "text, expected",
    [("adapters: [", "not valid YAML"), ("- just\n- a list\n", "expected a mapping")],
)
def test_unreadable_spec_exits_2_naming_the_file(text, expected, tmp_path, lorafleet_home):
    spec = tmp_path / "broken.yaml"
    spec.write_text(text)
    result = CliRunner().invoke(app, ["train", str(spec), "--no-telemetry"])
    assert result.exit_code == 2
    assert "broken.yaml" in result.output and expected in result.output
    assert not (lorafleet_home / "runs").exists()


def test_missing_spec_file_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["train", str(tmp_path / "absent.yaml"), "--no-telemetry"])
    assert result.exit_code == 2
    assert "absent.yaml" in result.output

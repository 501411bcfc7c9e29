"""Versions: lineage, content hashing, numbering, and what register refuses."""

from __future__ import annotations

import pytest

from lorafleet.errors import BadInput, NotFound
from lorafleet.store import registry as reg


def _count(store, table: str) -> int:
    return int(store.query(f"SELECT count() FROM {table}").result_rows[0][0])


def test_register_run_records_lineage_hash_and_evals_per_family(store, seeder):
    seeder.run("run-1", {"good": 0.8, "other": 0.5})
    seeder.run("run-2", {"solo": 0.7}, family="summarizer")
    versions = reg.register_run(store, "run-1", actor="alice")

    assert [(v.family, v.version, v.adapter) for v in versions] == [
        ("support-bot", 1, "good"),
        ("support-bot", 2, "other"),
    ]
    good = versions[0]
    files = reg.hash_files(seeder.root / "run-1" / "good")
    assert good.files == files and set(files) >= {"adapter_config.json", "adapter_model.safetensors"}
    assert good.content_sha256 == reg.content_hash(files) != versions[1].content_sha256
    assert (good.base_model, good.base_model_sha256, good.code_revision) == ("tiny", "b" * 64, "abc123")
    assert good.dataset_hashes == {"train": "d" * 64} and good.config == {"rank": 2, "lr": 1e-3}
    assert good.eval_step == 10 and good.created_by == "alice"
    assert {(s["metric"], round(s["mean"], 6), s["examples"]) for s in good.eval_summary} == {
        ("exact_match", 0.8, 40),
        ("eval_loss", 1.22875, 40),
    }
    assert reg.get_version(store, "support-bot", 1) == good
    assert reg.register_run(store, "run-2")[0].ref == "summarizer:1", "numbering is per family"
    families = {f["family"]: f for f in reg.list_families(store)}
    assert (families["support-bot"]["versions"], families["summarizer"]["latest"]) == (2, 1)


def test_registering_identical_content_returns_the_existing_version(store, seeder):
    seeder.run("run-1", {"good": 0.8})
    first = reg.register_version(store, "run-1", "good")
    again = reg.register_version(store, "run-1", "good", actor="someone-else")
    assert again == first
    assert reg.register_run(store, "run-1") == [first]
    assert _count(store, "registry_versions") == 1


def test_register_run_takes_only_finished_and_early_stopped_adapters(store, seeder):
    seeder.run("run-1", {"done": 0.8})
    seeder.run("run-1", {"stopped-early": 0.7}, status="early_stopped")
    seeder.run("run-1", {"still-running": 0.6}, status="running")
    seeder.run("run-1", {"broken": 0.1}, status="quarantined")
    assert sorted(v.adapter for v in reg.register_run(store, "run-1")) == ["done", "stopped-early"]


def test_register_refuses_unknown_run_adapter_and_non_peft_artifact(store, seeder):
    seeder.run("run-1", {"good": 0.8, "gutted": 0.5})
    (seeder.root / "run-1" / "gutted" / "adapter_model.safetensors").unlink()
    with pytest.raises(NotFound, match="nope"):
        reg.register_version(store, "nope", "good")
    with pytest.raises(NotFound, match="ghost"):
        reg.register_version(store, "run-1", "ghost")
    with pytest.raises(BadInput, match=r"gutted.*adapter_model\.safetensors|adapter_model\.safetensors.*gutted"):
        reg.register_version(store, "run-1", "gutted")
    assert _count(store, "registry_versions") == 0


def test_unknown_family_and_version_are_not_found_by_name(store, seeder):
    seeder.run("run-1", {"good": 0.8})
    reg.register_run(store, "run-1")
    with pytest.raises(NotFound, match="'nosuch'"):
        reg.list_versions(store, "nosuch")
    with pytest.raises(NotFound, match="unknown version 7 of family 'support-bot'"):
        reg.get_version(store, "support-bot", 7)
    with pytest.raises(BadInput, match="invalid version"):
        reg.parse_version("v2x")
    assert reg.parse_version("v3") == reg.parse_version("3") == 3


def test_actor_is_the_given_name_or_the_os_user_plus_the_clickhouse_user_on_a_server(store):
    import getpass

    from lorafleet.store import Store, parse_store_url

    assert reg.actor_name(store) == getpass.getuser()
    assert reg.actor_name(store, "  alice ") == "alice"
    server = Store(parse_store_url("http://ops:secret@127.0.0.1:9/db"))  # never connects: naming only
    assert reg.actor_name(server, "alice") == "alice (clickhouse user ops)"


def test_a_claimed_version_number_is_never_reused_even_if_its_row_is_deleted(store, seeder):
    seeder.run("run-1", {"first": 0.8, "second": 0.7, "third": 0.6})
    reg.register_version(store, "run-1", "first")
    reg.register_version(store, "run-1", "second")
    store.command("ALTER TABLE registry_versions DELETE WHERE version = 2", settings={"mutations_sync": 2})
    assert [v.version for v in reg.list_versions(store, "support-bot")] == [1]
    # Slot 2's token is still remembered: the claim is dropped, re-read, and the next number taken.
    assert reg.register_version(store, "run-1", "third").version == 3


def test_the_version_carries_the_evals_of_its_checkpoint_step(store, seeder):
    seeder.run("run-1", {"mid": 0.8, "plain": 0.8})
    for name in ("mid", "plain"):  # a later eval, after the checkpoint was taken
        seeder.evals("run-1", name, 0.2, step=20)
    (seeder.root / "run-1" / "mid" / "lorafleet.json").write_text('{"step": 15, "run_id": "run-1"}')

    mid, plain = reg.register_run(store, "run-1")
    assert mid.eval_step == 10 and {s["mean"] for s in mid.eval_summary if s["metric"] == "exact_match"} == {0.8}
    assert plain.eval_step == 20, "without the trainer's metadata: the latest eval"

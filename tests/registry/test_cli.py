"""The registry CLI on refusals: bad input exits 2 writing nothing; a changed byte exits 3 naming the file."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lorafleet.ui.cli import app

runner = CliRunner()
TABLES = ("registry_versions", "registry_alias_events", "registry_conflicts")


def _cli(url: str, *args: str):
    return runner.invoke(app, [*args, "--store", url])


def _counts(store) -> dict[str, int]:
    return {t: int(store.query(f"SELECT count() FROM {t}").result_rows[0][0]) for t in TABLES}


@pytest.fixture
def production(store, store_url, seeder):
    """support-bot v1 (good, on production) and v2 (worse), registered and promoted through the CLI."""
    seeder.run("run-1", {"a-good": 0.8, "b-worse": 0.5})
    registered = _cli(store_url, "register", "run-1", "--json")
    assert registered.exit_code == 0, registered.output
    assert [v["ref"] for v in json.loads(registered.stdout)] == ["support-bot:1", "support-bot:2"]
    promoted = _cli(store_url, "promote", "support-bot", "v1", "--alias", "production", "--reason", "launch")
    assert promoted.exit_code == 0, promoted.output
    assert "first promotion" in promoted.stdout and "exact_match" in promoted.stdout
    return seeder.root / "run-1"


BAD_INPUT = [
    (("versions", "nosuch"), "unknown family 'nosuch'"),
    (("compare", "support-bot", "1", "9"), "unknown version 9 of family 'support-bot'"),
    (("promote", "nosuch", "1", "--alias", "production"), "unknown family 'nosuch'"),
    (("promote", "support-bot", "9", "--alias", "production"), "unknown version 9"),
    (("promote", "support-bot", "v2x", "--alias", "production"), "invalid version 'v2x'"),
    (("promote", "support-bot", "2", "--alias", "prod uction"), "invalid alias 'prod uction'"),
    (("promote", "support-bot", "2", "--alias", "../etc"), "invalid alias '../etc'"),
    (("promote", "support-bot", "2", "--alias", "production", "--force"), "--force needs --reason"),
    (("promote", "support-bot", "2", "--alias", "production", "--force", "--reason", "  "), "--force needs --reason"),
    (("rollback", "support-bot", "--alias", "canary"), "unknown alias 'canary' of family 'support-bot'"),
    (("rollback", "support-bot", "--alias", "production", "--to", "9"), "unknown version 9"),
    (("rollback", "nosuch", "--alias", "production"), "unknown family 'nosuch'"),
    (("history", "support-bot", "--at", "last tuesday"), "invalid --at 'last tuesday'"),
    (("history", "support-bot", "--at", "2999-01-01T00:00:00Z"), "in the future"),
    (("history", "support-bot", "--alias", "canary"), "unknown alias 'canary'"),
    (("history", "nosuch"), "unknown family 'nosuch'"),
    (("resolve", "support-bot@canary"), "unknown alias 'canary'"),
    (("resolve", "nosuch:1"), "unknown family 'nosuch'"),
    (("resolve", "support-bot"), "use FAMILY@ALIAS or FAMILY:VERSION"),
    (("register", "no-run", "a-good"), "unknown run 'no-run'"),
    (("register", "run-1", "ghost"), "unknown adapter 'ghost'"),
]


def test_bad_input_exits_2_names_the_culprit_and_writes_nothing(store, store_url, production):
    before = _counts(store)
    failures = []
    for args, message in BAD_INPUT:
        result = _cli(store_url, *args)
        if result.exit_code != 2 or message not in " ".join(result.stderr.split()):
            failures.append((args, result.exit_code, result.output))
    assert not failures
    assert _counts(store) == before


def test_one_changed_byte_makes_resolve_and_promote_refuse_naming_the_file(store, store_url, production):
    weights = production / "a-good" / "adapter_model.safetensors"
    assert _cli(store_url, "resolve", "support-bot@production").stdout.strip() == str(production / "a-good")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    before = _counts(store)

    resolved = _cli(store_url, "resolve", "support-bot@production")
    assert (resolved.exit_code, resolved.stdout) == (3, "")
    assert f"file {weights} does not match its checksum" in resolved.stderr
    promoted = _cli(store_url, "promote", "support-bot", "1", "--alias", "staging")
    assert promoted.exit_code == 3 and str(weights) in promoted.stderr
    assert _counts(store) == before
    assert _cli(store_url, "resolve", "support-bot:2").exit_code == 0, "the intact version still resolves"

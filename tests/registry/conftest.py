"""Registry fixtures: real PEFT adapters on a tiny Llama, and runs/adapters/evals rows written
through the store API as the trainer's telemetry would write them."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from lorafleet.store import runs
from lorafleet.store.evals import EvalRow, write_evals

TINY_LLAMA = dict(
    vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
)  # fmt: skip
EXAMPLES = 40


def tiny_base():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**TINY_LLAMA))


def save_peft_adapter(path: Path, seed: int) -> Path:
    """A real PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors); seed varies the weights."""
    import torch
    from peft import LoraConfig, get_peft_model

    base = tiny_base()
    torch.manual_seed(seed)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(str(path))
    return path


def eval_rows(run_id: str, adapter: str, quality: float, step: int = 10) -> list[EvalRow]:
    """Paired scores: example i is right iff i < quality*N, and its loss falls as quality rises."""
    rows = []
    for i in range(EXAMPLES):
        example = f"ex{i:03d}"
        right = 1.0 if i < quality * EXAMPLES else 0.0
        loss = 2.0 - quality + 0.01 * (i % 7)
        rows.append(EvalRow(run_id, adapter, step, "qa", "exact_match", example, right, f"q{i}", f"o{i}", f"r{i}"))
        rows.append(EvalRow(run_id, adapter, step, "qa", "eval_loss", example, loss, f"q{i}", f"o{i}", f"r{i}"))
    return rows


@dataclass
class Seeder:
    """Writes a run with adapters of given eval quality; each adapter gets its own artifact."""

    store: object
    root: Path
    cache: Path  # adapters built once per test session, keyed by seed, copied into each test
    seed: int = 0

    def adapter(self, target: Path) -> Path:
        self.seed += 1
        built = self.cache / f"seed-{self.seed}"
        if not built.exists():
            save_peft_adapter(built, self.seed)
        shutil.copytree(built, target)
        return target

    def evals(self, run_id: str, adapter: str, quality: float, step: int) -> None:
        write_evals(self.store, eval_rows(run_id, adapter, quality, step))

    def run(self, run_id: str, adapters: dict[str, float], family: str = "support-bot", status: str = "finished"):
        paths = {name: self.adapter(self.root / run_id / name) for name in adapters}
        run = runs.RunRow(run_id, name=run_id, status="finished", base_model="tiny", base_model_sha256="b" * 64,
                          code_revision="abc123")  # fmt: skip
        rows = [
            runs.AdapterRow(run_id, name, family=family, status=status, config={"rank": 2, "lr": 1e-3},
                            dataset_sha256="d" * 64, step=10, artifact_path=str(path))
            for name, path in paths.items()
        ]  # fmt: skip
        with self.store.session():  # one unit of work: opening the embedded engine costs tens of ms
            runs.upsert_run(self.store, run)
            runs.upsert_adapters(self.store, rows)
            for name, quality in adapters.items():
                write_evals(self.store, eval_rows(run_id, name, quality))


@pytest.fixture(scope="session")
def adapter_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("peft-adapters")


@pytest.fixture
def seeder(store, tmp_path, adapter_cache) -> Seeder:
    return Seeder(store, tmp_path / "artifacts", adapter_cache)

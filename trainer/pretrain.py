"""`tiny-tasks`: the tiny base briefly pre-trained on the built-in task mixture (cached under LORAFLEET_HOME).

Pre-training text names the task ("reverse abc=cba"); the adapters' data ("abc=" -> "cba") does not, so a
fresh adapter starts near zero exact match and must learn which skill its prompts call for: real learning
that LoRA can do in a few dozen steps on a CPU.
"""

from __future__ import annotations

import random

import torch

from lorafleet.trainer.config import BUILTIN_TASKS
from lorafleet.trainer.data import TASK_PROMPT, _task_pair, is_held_out

PRETRAIN_STEPS = 600  # ~30-50 s on one shared CPU core, once per LORAFLEET_HOME
PRETRAIN_BATCH = 32


def mixture_texts(n: int, seed: int = 1234) -> list[str]:
    """Task-named examples of every task, none from the held-out fifth the adapters are evaluated on."""
    rng = random.Random(seed)
    texts: list[str] = []
    while len(texts) < n:
        task = rng.choice(BUILTIN_TASKS)
        x, y = _task_pair(task, rng)
        if not is_held_out(TASK_PROMPT.format(x)):
            texts.append(f"{task} {x}={y}")
    return texts


def pretrain_on_tasks(tiny_dir, steps: int = PRETRAIN_STEPS, batch: int = PRETRAIN_BATCH, seed: int = 0):
    """Full-parameter training of `tiny` on the mixture; deterministic for a given thread count."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    model.train()
    torch.manual_seed(seed)
    texts = mixture_texts(steps * batch)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        ids, labels = _encode_batch(tokenizer, texts[step * batch : (step + 1) * batch])
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    return model, tokenizer


def _encode_batch(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [
        [tokenizer.bos_token_id, *tokenizer.encode(t, add_special_tokens=False), tokenizer.eos_token_id] for t in texts
    ]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, : len(row)] = torch.tensor(row)
    return ids, labels

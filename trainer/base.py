"""Base model loading: any causal LM through AutoModelForCausalLM / AutoTokenizer.from_pretrained.

The built-in bases are created deterministically, saved with save_pretrained under
$LORAFLEET_HOME/models/<name>, and then loaded through that same from_pretrained path:
- `tiny`: a small randomly initialised Llama with a byte-level tokenizer (tests, benchmarks);
- `tiny-tasks`: `tiny` briefly pre-trained on the built-in task mixture, so LoRA has features to adapt (demo).
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path

import torch

from lorafleet import lorafleet_home
from lorafleet.errors import BadInput

BUILTIN_BASES = ("tiny", "tiny-tasks")
TINY_CONFIG = dict(
    hidden_size=128,
    intermediate_size=344,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars would break the live table


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-ins for the 256 byte values (what the ByteLevel pre-tokenizer emits)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def build_byte_tokenizer():
    """A byte-level tokenizer: 3 special tokens, then one id per byte (id = byte + 3)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({ch: b + len(SPECIAL_TOKENS) for b, ch in _byte_to_unicode().items()})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def build_tiny(seed: int = 0, **overrides):
    """The deterministic tiny Llama (random init from `seed`) and its byte-level tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **{**TINY_CONFIG, **overrides},
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config), tokenizer


def _save_atomically(model, tokenizer, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process created it first; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_builtin(name: str) -> Path:
    """Create a built-in base under $LORAFLEET_HOME/models once; return its directory."""
    target = lorafleet_home() / "models" / name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _quiet_transformers()
    if name == "tiny":
        model, tokenizer = build_tiny()
    else:
        from lorafleet.trainer.pretrain import pretrain_on_tasks

        model, tokenizer = pretrain_on_tasks(ensure_builtin("tiny"))
    _save_atomically(model, tokenizer, target)
    return target


def resolve_base_path(base_model: str) -> str:
    if base_model in BUILTIN_BASES:
        return str(ensure_builtin(base_model))
    if Path(base_model).exists():
        if not (Path(base_model) / "config.json").is_file():
            raise BadInput(f"base_model: {base_model} has no config.json")
        return base_model
    return base_model  # a hub id, resolved from the local cache (nothing is downloaded when offline)


def load_base(base_model: str, dtype: str = "float32", device: str = "cpu"):
    """Load (model, tokenizer) by hub id, local path or built-in name; the model is frozen and in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    path = resolve_base_path(base_model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    except (OSError, ValueError) as exc:
        raise BadInput(f"base_model: cannot load {base_model!r}: {exc}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.requires_grad_(False)
    model.eval()
    return model.to(device), tokenizer


def base_sha256(base_model: str) -> str:
    """sha256 over the base's weight files (name + bytes, in name order): identifies the exact weights."""
    path = Path(resolve_base_path(base_model))
    if not path.is_dir():
        return ""
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BadInput("device: cuda requested but no CUDA device is available")
    return device

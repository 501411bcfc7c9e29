"""Training-health flags from per-adapter statistics (store.metrics.health_stats): pure rules, no I/O."""

from __future__ import annotations

import math

import pandas as pd

DIVERGE_OVER_START = 1.10  # ended more than 10% above its first loss
DIVERGE_OVER_MIN = 2.0  # or more than twice its best loss
THROUGHPUT_DROP = 0.80  # below 80% of the previous run's tokens/s for the same config
GRAD_SPIKE_RATIO = 10.0  # a gradient norm above 10x the adapter's median

VANISHED = 1e-8  # a gradient norm this small after the first fifth of steps: the adapter stopped learning

FLAGS = ("divergence", "nan_quarantine", "vanished_gradients", "grad_norm_spikes", "throughput_drop")
SEVERE = ("divergence", "nan_quarantine", "vanished_gradients")  # broken; the others are worth a look


def _finite(value) -> bool:
    return value is not None and not (isinstance(value, float) and not math.isfinite(value))


def flags(row: dict) -> list[str]:
    """The health flags one adapter raises."""
    raised = []
    first, best, last = row.get("loss_first"), row.get("loss_min"), row.get("loss_last")
    if (
        _finite(first)
        and _finite(best)
        and (not _finite(last) or last > first * DIVERGE_OVER_START or last > best * DIVERGE_OVER_MIN)
    ):
        raised.append("divergence")
    if row.get("status") == "quarantined" or (row.get("loss_nonfinite") or 0) > 0:
        raised.append("nan_quarantine")
    median, peak = row.get("grad_median"), row.get("grad_max")
    if _finite(peak) and peak < VANISHED:  # e.g. saturated by a far too high learning rate
        raised.append("vanished_gradients")
    if _finite(median) and _finite(peak) and median and peak > GRAD_SPIKE_RATIO * median:
        raised.append("grad_norm_spikes")
    now, before = row.get("tokens_per_s"), row.get("prev_tokens_per_s")
    if _finite(now) and _finite(before) and before and now < before * THROUGHPUT_DROP:
        raised.append("throughput_drop")
    return raised


def flag_frame(stats: pd.DataFrame) -> pd.DataFrame:
    """stats plus a `flags` list column and one boolean column per flag."""
    out = stats.copy()
    records = out.astype(object).where(out.notna(), None).to_dict("records")
    out["flags"] = [flags(r) for r in records]
    for name in FLAGS:
        out[name] = out["flags"].map(lambda raised, n=name: n in raised)
    return out

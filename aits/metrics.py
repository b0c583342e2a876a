"""Metrics say how they combine where they are made (as RLlib's MetricsLogger ``reduce=``).

The module that makes a metric declares its rule once, next to the code::

    declare({"part1/accepted": "sum", "part1/max_retrains": "max", "part1/mean_dt": "mean"})

and whoever gathers rows from several workers (the driver, over its collectors) calls
``merge(rows)``: each key is combined by its declared rule. A key nobody declared is averaged.
"""
from __future__ import annotations

REDUCERS = {
    "sum": lambda vals: sum(vals),
    "max": max,
    "min": min,
    "mean": lambda vals: float(sum(vals) / len(vals)),
    "median": lambda vals: float(sorted(vals)[len(vals) // 2] if len(vals) % 2 else
                                 0.5 * (sorted(vals)[len(vals) // 2 - 1] + sorted(vals)[len(vals) // 2])),
}

_RULES: dict[str, str] = {}


def declare(rules: dict[str, str]) -> dict[str, str]:
    """Register how each named metric combines across workers; returns ``rules`` (for reuse)."""
    for key, rule in rules.items():
        if rule not in REDUCERS:
            raise ValueError(f"metric {key}: unknown reduce rule {rule!r} (one of {', '.join(REDUCERS)})")
        _RULES[key] = rule
    return rules


def rule(key: str) -> str:
    return _RULES.get(key, "mean")


def merge(rows: list[dict]) -> dict:
    """Rows of the same metrics from several workers -> one row, key order of the first row."""
    if not rows:
        return {}
    return {key: REDUCERS[rule(key)]([r[key] for r in rows]) for key in rows[0]}


def ratio(num: float, den: float) -> float:
    """num / den, 0.0 when den is zero (an epoch with nothing to count must not divide by zero)."""
    return float(num) / den if den else 0.0


def mean(values) -> float:
    """Mean of a sequence or array; 0.0 when it is empty."""
    n = len(values)
    return float(sum(values) / n) if n else 0.0


__all__ = ["REDUCERS", "declare", "merge", "ratio", "rule", "mean"]

"""Metrics combine by the rule declared where they are made, not by their names."""
from __future__ import annotations

import pytest

import actors.collector  # noqa: F401 - declares system/collect_time
from aits import collect  # noqa: F401 - importing aits declares the part1/* rules
from aits.metrics import declare, merge, ratio, rule


def test_merge_applies_declared_rules():
    declare({"test/count": "sum", "test/worst": "max", "test/best": "min"})
    rows = [{"test/count": 2, "test/worst": 5.0, "test/best": 1.0, "test/other": 1.0},
            {"test/count": 3, "test/worst": 7.0, "test/best": 0.5, "test/other": 3.0}]
    assert merge(rows) == {"test/count": 5, "test/worst": 7.0, "test/best": 0.5, "test/other": 2.0}
    assert merge([]) == {}
    # The collect phase and the collector declare theirs next to where they are made.
    assert rule("part1/accepted") == "sum" and rule("part1/max_retrains") == "max"
    assert rule("part1/mean_dt") == "mean" and rule("system/collect_time") == "max"
    with pytest.raises(ValueError):
        declare({"test/x": "average"})


def test_ratio_guards_empty_counts():
    assert ratio(3, 4) == 0.75 and ratio(0, 0) == 0.0 and ratio(5, 0) == 0.0

"""The logged metric keys are the seed's (``part1/*`` collect, ``part2/*`` generalize) and exactly the
ones the table of docs/DESIGN.md §7.3 lists, in metrics.jsonl and in the offline W&B file."""
from __future__ import annotations

import json
import re
from pathlib import Path

import actors  # noqa: F401 - declares system/collect_time
import aits.passage  # noqa: F401 - declares the passage/* rules
from aits import metrics
from driver.train import main

import wandb_reader
from helpers import rows, write_config

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "DESIGN.md"
OLD = ("collect/", "generalize/")  # this project's names before it went back to the seed's
# The recommended rule with the passage objective and its hinge on, so that every documented key is logged.
PASSAGE = dict(features={"feature_type": "scale_free", "history_len": 0, "normalize_inputs": "none"},
               model={"output": "factor", "init_factor": 0.02, "symmetric_iterations": 0, "recursive": True,
                      "init_dt": None, "max_modulation": 3.0},
               train={"passage": True, "passage_steps": 10, "passage_batch": 2, "band_on_accept": False,
                      "epochs": 2, "passage_hinge": 1.0, "passage_jumps": 1.0,
                      "passage_factor_jumps": 1.0})


def documented() -> dict[str, str]:
    """{key: merge rule, or '—' for one value per epoch} from the key table of DESIGN.md §7.3."""
    text = DESIGN.read_text()
    section = text[text.index("### 7.3"):text.index("### 7.4")]
    return {m[1]: m[2] for m in re.finditer(r"^\| `([a-z0-9]+/\w+)` \| (\S+) \|", section, re.M)}


def test_design_table_lists_the_seed_prefixes_with_the_declared_merge_rules():
    keys = documented()
    prefixes = {k.split("/")[0] for k in keys}
    assert prefixes == {"part1", "part2", "passage", "system"}
    assert sum(k.startswith("part1/") for k in keys) == 18 and sum(k.startswith("part2/") for k in keys) == 8
    for key, rule in keys.items():
        if rule != "—":  # collector metrics: the docs' merge rule is the one the code declares
            assert metrics.rule(key) == rule, key


def test_run_logs_exactly_the_documented_keys_to_jsonl_and_wandb(tmp_path):
    expect = {"epoch", *documented()}
    cfg = write_config(tmp_path, name="names", ray={"inprocess": True}, wandb={"mode": "offline"}, **PASSAGE)
    assert main(["--config", cfg]) == 0
    run_dir = tmp_path / "runs" / "names"
    jsonl = rows(run_dir)
    assert len(jsonl) == 2 and all(set(r) == expect for r in jsonl)
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    history = wandb_reader.history(files[0])
    assert len(history) == 2
    for logged, row in zip(history, jsonl):
        assert {k for k in logged if not k.startswith("_")} == expect  # _step, _runtime: W&B's own
        assert logged["part1/accepted"] == row["part1/accepted"] and logged["part2/loss"] == row["part2/loss"]
        assert not any(k.startswith(OLD) for k in logged)


def test_resume_of_a_run_logged_under_the_old_names_rewrites_its_rows(tmp_path, capsys):
    """A run from before the rename (``collect/*``, ``generalize/*`` rows) resumes; its kept rows get the
    seed's names and the new rows follow; a default run logs every documented key but passage/*."""
    expect = {"epoch", *(k for k in documented() if not k.startswith("passage/"))}
    cfg = write_config(tmp_path, name="old", ray={"inprocess": True}, train={"epochs": 2},
                       run={"checkpoint_interval": 1})
    assert main(["--config", cfg]) == 0
    run_dir = tmp_path / "runs" / "old"
    before = rows(run_dir)
    assert all(set(r) == expect for r in before)
    old = [{k.replace("part1/", "collect/").replace("part2/", "generalize/"): v for k, v in r.items()} for r in before]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    assert main(["--config", cfg, "--resume", "auto", "--set", "train.epochs=3"]) == 0
    assert "Resumed from epoch 2" in capsys.readouterr().out
    after = rows(run_dir)
    assert [r["epoch"] for r in after] == [1, 2, 3] and all(set(r) == expect for r in after)
    assert after[:2] == before  # the old rows' values, timings included, under the seed's names

"""driver/sweep.py: the space syntax, bad space files, a two-trial sweep end to end on the session's
Ray (table, plot, best.yaml that trains), and an interrupted sweep (Ctrl-C) resumed to the end."""
from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from aits import Config, load_checkpoint, scoreboard
from aits.policy import learned_methods
from driver import sweep
from driver.train import main as train_main

from helpers import rows as metric_rows

ROOT = Path(__file__).resolve().parents[1]

# configs/ray.yaml's rule (factor output, scale-free features, step recursion, passage) at toy sizes
TINY = {
    "run": {"name": "tiny", "seed": 1},
    "features": {"feature_type": "scale_free"},
    "model": {"hidden_dims": [8, 8], "output": "factor", "init_factor": 0.03, "recursive": True},
    "train": {"epochs": 50, "steps_per_epoch": 5, "E_lower": 1e-5, "generalize_steps": 10,
              "generalize_batch_size": 16, "lr": 1e-3, "weight_decay": 0.0, "max_retrain_steps": 50,
              "passage": True, "passage_steps": 20, "passage_batch": 4},
    "ray": {"num_collectors": 1, "systems_per_collector": 4, "learner_cpus": 0, "inprocess": True},
    "wandb": {"mode": "disabled"},
}
SPACE = "train.lr: loguniform(1e-4, 1e-2)\nmodel.init_factor: choice([0.02, 0.03])\ntrain.passage_steps: 20\n"


@pytest.fixture
def files(tmp_path):
    """(base config, space file) of a toy sweep under ``tmp_path``."""
    base = dict(TINY, run={**TINY["run"], "output_dir": str(tmp_path / "runs")})
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "space.yaml").write_text(SPACE)
    return str(tmp_path / "base.yaml"), str(tmp_path / "space.yaml")


# ---------------------------------------------------------------- the space syntax
def test_specs_parse_to_tune_domains_and_fixed_values():
    from ray.tune.search.sample import Categorical, Float, Integer

    fields = sweep.config_fields()
    spec = lambda key, raw: sweep.parse_spec(key, raw, sweep.is_int_key(fields[key]))  # noqa: E731
    lr = spec("train.lr", "loguniform(1e-4, 1e-2)")
    assert lr.kind == "loguniform" and lr.args == (1e-4, 1e-2) and lr.log_scale()
    domain = lr.to_tune()
    assert isinstance(domain, Float) and (domain.lower, domain.upper) == (1e-4, 1e-2)
    dims = spec("model.hidden_dims", "choice([[32, 32], [64, 64]])").to_tune()
    assert isinstance(dims, Categorical) and dims.categories == [[32, 32], [64, 64]]
    steps = spec("train.passage_steps", "randint(300, 900)").to_tune()
    assert isinstance(steps, Integer) and (steps.lower, steps.upper) == (300, 900)
    assert spec("model.activation", "choice([tanh, relu])").args == (["tanh", "relu"],)  # bare words
    assert spec("train.lr", "grid([1e-3, 3e-3])").to_tune() == {"grid_search": [1e-3, 3e-3]}
    fixed = spec("model.hidden_dims", [16, 16])
    assert not fixed.swept and fixed.to_tune() == [16, 16]


def test_strongest_ratio_prefers_the_scoreboards_key_and_else_takes_the_strongest_family():
    ratios = {"fixed": 0.001, "adaptive": 0.5, "recursive_adaptive": 0.9, "logh": 5.0, "ias15": 7.0,
              "symmetric_adaptive": None}
    entry = {"ratios": {"equal_force_evals": ratios}}
    assert sweep.strongest_ratio(entry) == 0.9  # learned / best = the largest learned / family; logh out
    entry["ratios"]["equal_force_evals"] = {**ratios, "strongest": 0.7}
    assert sweep.strongest_ratio(entry) == 0.7
    assert sweep.strongest_ratio({"ratios": {"equal_force_evals": {"fixed": None, "logh": 1.0}}}) is None


def test_asha_rungs_fall_on_the_epochs_where_the_objective_is_measured(tmp_path, files):
    from ray.tune.schedulers import ASHAScheduler

    base, space = files
    args = sweep.parse_args(["--config", base, "--space", space, "--epochs", "25", "--metric-every", "5",
                             "--out", str(tmp_path / "out")])
    setup, out = sweep.prepare(args)
    assert not out.exists()  # validating the space writes nothing
    tuner = sweep.build_tuner(setup, out)
    tune_config = tuner._local_tuner._tune_config  # Tune's own objects (no public getter)
    asha = tune_config.scheduler
    assert (tune_config.metric, tune_config.mode) == ("objective", "min") and isinstance(asha, ASHAScheduler)
    assert asha._time_attr == "epoch" and [m for m, _ in asha._brackets[0]._rungs] == [20, 10, 5]


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("text, expected", [
    ("train.lrr: loguniform(1e-4, 1e-2)\n", "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    ("train.lr: logunifrm(1e-4, 1e-2)\n", "train.lr: unknown search spec 'logunifrm(...)' (did you mean 'loguniform'?)"),
    ("train.lr: loguniform(1e-2, 1e-4)\n", "train.lr: loguniform needs low < high"),
    ("train.lr: loguniform(0, 1e-2)\n", "train.lr: loguniform needs 0 < low"),
    ("train.passage_steps: uniform(100, 900)\n", "train.passage_steps: an integer key; use randint"),
    ("model.hidden_dims: choice([])\n", "model.hidden_dims: choice takes one non-empty list"),
    ("model.hidden_dims: choice([[32, 32], [0]])\n", "model.hidden_dims = [0]: model.hidden_dims: every value must be >= 1"),
    ("train.epochs: choice([1, 2])\n", "train.epochs is set by the sweep for every trial"),
    ("train.lr: 0.001\n", "no key is swept"),
    ("- train.lr\n", "expected a mapping of config keys"),
    ("train.lr: [loguniform(\n", "invalid YAML"),
    (None, "not found"),
])
def test_bad_space_file_is_one_line_exit_2_and_nothing_written(tmp_path, files, capsys, text, expected):
    base, space = files
    if text is None:
        space = str(tmp_path / "missing.yaml")
    else:
        Path(space).write_text(text)
    out = tmp_path / "out"
    assert sweep.main(["--config", base, "--space", space, "--samples", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: space file ") and expected in err[0], err
    assert not out.exists()


def test_resume_without_a_sweep_and_a_second_sweep_into_the_same_folder_are_refused(tmp_path, files, capsys):
    base, space = files
    out = tmp_path / "out"
    assert sweep.main(["--out", str(out), "--resume"]) == 2
    assert "holds no sweep to continue" in capsys.readouterr().err and not out.exists()
    out.mkdir()
    (out / "sweep.json").write_text("{}")
    assert sweep.main(["--config", base, "--space", space, "--out", str(out)]) == 2
    assert "already holds a sweep; continue it with --resume" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["sweep.json"]


# ---------------------------------------------------------------- a sweep end to end
def test_two_trial_sweep_writes_table_plot_and_a_best_yaml_that_trains(ray_session, tmp_path, files, capsys):
    base, space = files
    out = tmp_path / "out"
    argv = ["--config", base, "--space", space, "--samples", "2", "--epochs", "2", "--out", str(out)]
    assert sweep.main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "results.json").read_text())
    trials = result["trials"]
    assert len(trials) == 2 and result["sweep"]["finished"] and result["sweep"]["scheduler"] == "asha"
    for t in trials:
        assert 1e-4 <= t["values"]["train.lr"] <= 1e-2 and t["values"]["model.init_factor"] in (0.02, 0.03)
        # the objective is measured at the end only (metric_every = min(checkpoint_interval 10, 2 epochs))
        assert t["status"] == "complete" and t["epochs"] == 2
        assert t["objective_epoch"] == 2 and 0 < t["objective"] < math.inf
        run_dir = Path(t["run_dir"])
        cfg = Config.from_dict(load_checkpoint(run_dir / "model" / f"model_epoch_{t['epochs']:04d}.pt")["config"])
        # the trial ran its sampled values, in-process, for the sweep's epochs; the space's fixed value too
        assert cfg.train.lr == t["values"]["train.lr"] and cfg.model.init_factor == t["values"]["model.init_factor"]
        assert cfg.ray.inprocess and cfg.train.epochs == 2 and cfg.train.passage_steps == 20
        # Tune got each epoch's metrics row, as the trainer wrote it to metrics.jsonl
        reported = [json.loads(line) for line in
                    (out / "tune" / "sweep" / t["trial"] / "result.json").read_text().splitlines()]
        # (a trial ASHA stops may finish one more epoch than it reported: Tune's reporting is asynchronous)
        written = metric_rows(run_dir)[:len(reported)]
        assert [r["epoch"] for r in reported] == [r["epoch"] for r in written] == list(range(1, t["epochs"] + 1))
        for got, row in zip(reported, written):
            loss = next(k for k in row if k.endswith("/loss") and k.split("/")[0] in ("part2", "generalize"))
            assert got[loss] == pytest.approx(row[loss], rel=1e-12) and "objective" in got
    best = min((t for t in trials if t["status"] == "complete"), key=lambda t: t["objective"])
    assert result["sweep"]["best"] == best["trial"]
    # the objective: the median over the quick suite of the scoreboard's learned / strongest, of the
    # trial's last checkpoint (checked here on the cheaper of the two systems, by a full scoring: with the
    # equal-wall-time runs that the objective skips)
    ckpt = load_checkpoint(Path(best["run_dir"]) / "model" / "model_epoch_0002.pt")
    systems = scoreboard.suite_systems("quick", 2, 2, 0.0)
    assert sorted(best["systems"]) == sorted(s.name for s in systems)
    assert best["objective"] == pytest.approx(statistics.median(best["systems"].values()), rel=1e-12)
    short = min(systems, key=lambda s: s.duration)
    entry = scoreboard.score_system(short, {"learned": learned_methods(ckpt)["learned"]}, reference=False)
    assert best["systems"][short.name] == pytest.approx(entry["ratios"]["equal_force_evals"]["strongest"], rel=1e-12)

    table = (out / "results.md").read_text()
    assert table.count("| trial_") == 2 and "| train.lr | model.init_factor | objective |" in table
    assert f"{best['objective']:.4g}" in table and f"{best['objective']:.4g}" in printed
    png = (out / "objective.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    best_yaml = out / "best.yaml"
    cfg = Config.load(best_yaml)
    assert cfg.train.lr == best["values"]["train.lr"] and cfg.model.init_factor == best["values"]["model.init_factor"]
    assert cfg.train.epochs == 50 and cfg.run.name == "tiny_sweep_best"
    assert cfg.run.output_dir == str(tmp_path / "runs")
    assert train_main(["--config", str(best_yaml), "--set", "train.epochs=1"]) == 0
    assert "Training complete: 1 epochs" in capsys.readouterr().out
    assert (tmp_path / "runs" / "tiny_sweep_best" / "model" / "model_epoch_0001.pt").exists()


def test_an_interrupted_sweep_resumes_and_finishes_the_rest(ray_session, tmp_path, files):
    """Ctrl-C (SIGINT) to a sweep that joined the session's Ray (as under `ray job submit`) after its
    first trial; --resume runs the trial that was left and keeps the finished one."""
    base, space = files
    out = tmp_path / "out"
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address, "PYTHONPATH": str(ROOT)}
    # --trial-cpus 2: one trial at a time on the session's 2 CPUs, so the second waits for the first
    proc = subprocess.Popen([sys.executable, "-m", "driver.sweep", "--config", base, "--space", space,
                             "--samples", "2", "--epochs", "1", "--trial-cpus", "2",
                             "--scheduler", "fifo", "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = wait_for_a_finished_trial(out, proc, timeout=240)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output[-2000:]
    assert "sweep interrupted: continue with aits-sweep" in output
    before = {t["trial"]: t for t in json.loads((out / "results.json").read_text())["trials"]}
    assert before[first]["status"] == "complete" and not json.loads((out / "results.json").read_text())["sweep"]["finished"]
    left = [name for name, t in before.items() if t["status"] != "complete"]
    assert len(left) == 1

    assert sweep.main(["--out", str(out), "--resume"]) == 0
    after = {t["trial"]: t for t in json.loads((out / "results.json").read_text())["trials"]}
    assert set(after) == set(before) and all(t["status"] == "complete" for t in after.values())
    assert after[first]["objective"] == before[first]["objective"]  # kept, not trained again
    assert [r["epoch"] for r in metric_rows(Path(after[first]["run_dir"]))] == [1]
    assert [r["epoch"] for r in metric_rows(Path(after[left[0]]["run_dir"]))] == [1]
    assert after[left[0]]["values"] == before[left[0]]["values"] and after[left[0]]["objective"] > 0
    assert (out / "best.yaml").exists() and (out / "results.md").read_text().count("| complete |") == 2


def wait_for_a_finished_trial(out: Path, proc, timeout: float) -> str:
    """The name of the trial that finished (its Tune results reach epoch 1) once the second one has
    started (its run folder exists): the first is then done with, the second still running."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.stdout.read()[-2000:]
        started = list((out / "trials").glob("trial_*")) if (out / "trials").exists() else []
        if len(started) == 2:
            for results in (out / "tune" / "sweep").glob("trial_*/result.json"):
                lines = results.read_text().splitlines()
                if lines and json.loads(lines[-1]).get("epoch") == 1:
                    return results.parent.name
        time.sleep(0.2)
    raise AssertionError("no trial finished in time")

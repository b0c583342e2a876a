"""Hyper-parameter sweeps of driver/train.py on Ray Tune.

    aits-sweep --config BASE.yaml --space SPACE.yaml --samples N [--scheduler asha|fifo] [--out DIR]
               [--resume] [--epochs E] [--metric-every K] [--trial-cpus C] [--set section.key=value ...]

Each trial is one training run of the project's trainer (``driver.train.train``, actors in the
trial's process) that reports its metrics row to Tune every epoch and, every K epochs and at its
end, the quick scoreboard's objective: the median over the quick suite's systems of learned /
strongest classical max |dE/E| at equal force evaluations (lower is better). ASHA stops weak trials
at those epochs. ``--resume`` continues an interrupted sweep (``Tuner.restore``). Outputs in DIR:
``results.md``, ``results.json``, ``objective.png``, ``best.yaml``; see docs/SWEEPS.md.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import difflib
import io
import json
import math
import os
import re
import shutil
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from aits import Config, ConfigError, checkpoint_path, load_checkpoint
from aits.config import read_text_file

EXPERIMENT = "sweep"  # Tune's experiment folder: DIR/tune/sweep
KINDS = ("loguniform", "uniform", "randint", "lograndint", "choice", "grid")
SPEC_RE = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.DOTALL)
REDUCTION_FACTOR = 2  # ASHA keeps the better half at each rung: rungs at K, 2K, 4K, ... epochs
EXCLUDED = ("logh", "ias15")  # not in the strongest-classical comparison (logh is exact on Kepler orbits)
TRIAL_PREFIX = "trial_"


class SweepError(Exception):
    """Bad input to a sweep; the message is the one line the user sees."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + error
        raise SweepError(message)


def parse_args(argv):
    p = _Parser(prog="aits-sweep", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="base YAML config of every trial (required unless --resume)")
    p.add_argument("--space", help="YAML search space over config keys (required unless --resume)")
    p.add_argument("--samples", type=int, default=8, help="Tune samples (x the grid's combinations; default 8)")
    p.add_argument("--scheduler", choices=("asha", "fifo"), default="asha",
                   help="asha: stop weak trials at the objective's epochs (default); fifo: run every trial out")
    p.add_argument("--out", default="sweep", help="output folder (default: sweep)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep in --out")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the base's train.epochs)")
    p.add_argument("--metric-every", type=int, dest="metric_every",
                   help="epochs between objective evaluations (default: the base's run.checkpoint_interval)")
    p.add_argument("--trial-cpus", type=float, dest="trial_cpus", default=1.0,
                   help="CPUs Tune reserves per trial (its actors run in-process; default 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one base config value (repeatable)")
    args = p.parse_args(argv)
    for name in ("samples", "epochs", "metric_every"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SweepError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
    if args.trial_cpus <= 0:
        raise SweepError(f"--trial-cpus: must be > 0, got {args.trial_cpus:g}")
    if not args.resume and not (args.config and args.space):
        raise SweepError("--config and --space are required (or --resume to continue the sweep in --out)")
    return args


# ---------------------------------------------------------------- the search space
@dataclass
class Spec:
    """One key's search spec: ``kind`` one of KINDS or "fixed", its ``args`` and the space file's value."""

    key: str
    kind: str
    args: tuple
    raw: typing.Any

    @property
    def swept(self) -> bool:
        return self.kind != "fixed"

    def to_tune(self):
        """The Tune domain (or the plain value) for ``param_space``."""
        from ray import tune

        if self.kind == "fixed":
            return self.args[0]
        if self.kind in ("choice", "grid"):
            return (tune.choice if self.kind == "choice" else tune.grid_search)(list(self.args[0]))
        return getattr(tune, self.kind)(*self.args)

    def probes(self) -> list:
        """Values that stand for the spec's range when validating: the ends, or every listed value."""
        if self.kind == "fixed":
            return [self.args[0]]
        if self.kind in ("choice", "grid"):
            return list(self.args[0])
        low, high = self.args
        return [low, high - 1] if self.kind in ("randint", "lograndint") else [low, high]

    def log_scale(self) -> bool:
        return self.kind in ("loguniform", "lograndint")


def config_fields() -> dict[str, typing.Any]:
    """{'section.key': annotation} of every config key."""
    cfg, out = Config(), {}
    for sec in dataclasses.fields(cfg):
        section = getattr(cfg, sec.name)
        hints = typing.get_type_hints(type(section))
        out.update({f"{sec.name}.{f.name}": hints[f.name] for f in dataclasses.fields(section)})
    return out


def is_int_key(tp) -> bool:
    """Whether a key's annotation takes integers but no floats (a uniform float would fail it)."""
    args = typing.get_args(tp) or (tp,)
    base = [a for a in args if a is not type(None)]
    if typing.get_origin(tp) is list:
        return False
    return int in base and float not in base


def parse_spec(key: str, raw, int_key: bool) -> Spec:
    """The Spec of one space entry; SweepError with one line naming ``key`` when it is malformed."""
    if not isinstance(raw, str) or not SPEC_RE.match(raw):
        return Spec(key, "fixed", (raw,), raw)
    kind, inner = SPEC_RE.match(raw).groups()
    expected = "loguniform(a, b), uniform(a, b), randint(a, b), lograndint(a, b), choice([...]) or grid([...])"
    if kind not in KINDS:
        hint = difflib.get_close_matches(kind, KINDS, n=1)
        raise SweepError(f"{key}: unknown search spec '{kind}(...)'"
                         + (f" (did you mean '{hint[0]}'?)" if hint else "") + f"; expected {expected}")
    args = literal_args(inner)
    if args is None:
        raise SweepError(f"{key}: cannot read the arguments of '{raw.strip()}'")
    if kind in ("choice", "grid"):
        if len(args) != 1 or not isinstance(args[0], list) or not args[0]:
            raise SweepError(f"{key}: {kind} takes one non-empty list, e.g. {kind}([1, 2]); got '{raw.strip()}'")
        return Spec(key, kind, (args[0],), raw)
    nums = [to_number(a) for a in args]
    if len(nums) != 2 or any(n is None for n in nums):
        raise SweepError(f"{key}: {kind} takes two numbers, e.g. {kind}(1, 10); got '{raw.strip()}'")
    low, high = nums
    if kind in ("randint", "lograndint"):
        if not all(float(n).is_integer() for n in nums):
            raise SweepError(f"{key}: {kind} takes two integers, got '{raw.strip()}'")
        low, high = int(low), int(high)
    elif int_key:
        raise SweepError(f"{key}: an integer key; use randint(a, b), lograndint(a, b) or choice([...]), "
                         f"not {kind}")
    if not low < high:
        raise SweepError(f"{key}: {kind} needs low < high, got '{raw.strip()}'")
    if kind.startswith("log") and low <= 0:
        raise SweepError(f"{key}: {kind} needs 0 < low, got '{raw.strip()}'")
    return Spec(key, kind, (low, high), raw)


def literal_args(inner: str):
    """The comma-separated arguments as a list of Python literals (never evaluated as code); YAML flow
    syntax as a fallback for bare words (``choice([tanh, relu])``); None when neither reads them."""
    if not inner.strip():
        return []
    try:
        value = ast.literal_eval(f"({inner},)")
        return list(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    try:
        value = yaml.safe_load(f"[{inner}]")
    except yaml.YAMLError:
        return None
    return value if isinstance(value, list) else None


def to_number(x):
    """An int or float from a number or a numeric string ('1e-4': YAML leaves it a string), else None."""
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return x if math.isfinite(x) else None
    if isinstance(x, str):
        try:
            f = float(x)
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


def read_space(path: str) -> dict:
    """The space file as {'section.key': raw value}; nested sections (``train: {lr: ...}``) flattened."""
    p = Path(path)
    try:
        data = yaml.safe_load(read_text_file(p, "space file"))
    except ValueError as exc:
        raise SweepError(str(exc)) from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "parse error"
        raise SweepError(f"space file {p}: invalid YAML ({first})") from None
    if not isinstance(data, dict) or not data:
        raise SweepError(f"space file {p}: expected a mapping of config keys to search specs, "
                         f"e.g. 'train.lr: loguniform(1e-4, 1e-2)'")
    flat = {}
    for key, value in data.items():
        if isinstance(key, str) and "." not in key and isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[str(key)] = value
    return flat


def load_space(path: str, base: dict) -> dict[str, Spec]:
    """The validated space: every key a config key, every spec readable, every value it can take at
    its ends (or in its list) a valid config together with ``base``. SweepError: one line."""
    fields = config_fields()
    space = {}
    for key, raw in read_space(path).items():
        if key not in fields:
            hint = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            raise SweepError(f"space file {path}: unknown config key '{key}'"
                             + (f" (did you mean '{hint[0]}'?)" if hint else ""))
        if key in FORCED:
            raise SweepError(f"space file {path}: {key} is set by the sweep for every trial; it cannot be swept")
        try:
            space[key] = parse_spec(key, raw, is_int_key(fields[key]))
        except SweepError as exc:
            raise SweepError(f"space file {path}: {exc}") from None
    if not any(s.swept for s in space.values()):
        raise SweepError(f"space file {path}: no key is swept (every value is fixed)")
    for spec in space.values():
        for value in spec.probes():
            others = {k: s.probes()[0] for k, s in space.items() if k != spec.key}
            try:
                Config.from_dict(with_values(base, {**others, spec.key: value}))
            except ConfigError as exc:
                raise SweepError(f"space file {path}: {spec.key} = {value!r}: {exc.problems[0]}") from None
    return space


# ---------------------------------------------------------------- trial configs
FORCED = ("run.name", "run.output_dir", "ray.inprocess", "train.epochs", "run.checkpoint_interval")


def with_values(base: dict, values: dict) -> dict:
    """A copy of the config dict ``base`` with the dotted keys of ``values`` set."""
    out = {sec: dict(v) if isinstance(v, dict) else v for sec, v in base.items()}
    for key, value in values.items():
        sec, name = key.split(".", 1)
        out.setdefault(sec, {})[name] = value
    return out


def trial_dict(setup: dict, values: dict, name: str) -> dict:
    """A trial's config: the base, the trial's values, and what every trial shares (its own run folder,
    in-process actors, the sweep's epochs and objective interval, W&B off: Tune records the metrics)."""
    return with_values(setup["base"], {**values, "run.name": name, "run.output_dir": setup["trials_dir"],
                                       "ray.inprocess": True, "train.epochs": setup["epochs"],
                                       "run.checkpoint_interval": setup["metric_every"], "run.duration": None,
                                       "wandb.mode": "disabled"})


def plain(value):
    """Tune's sampled values as plain Python (numpy scalars break the config's int check)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


# ---------------------------------------------------------------- the objective
def strongest_ratio(entry: dict) -> float | None:
    """learned / strongest classical max |dE/E| at equal force evaluations of one scoreboard entry:
    the scoreboard's own ``strongest`` ratio when it has one, else the largest learned / family ratio
    (the strongest family has the smallest error) over the families except logh and ias15."""
    ratios = entry["ratios"]["equal_force_evals"]
    if ratios.get("strongest") is not None:
        return float(ratios["strongest"])
    values = [r for fam, r in ratios.items() if fam not in (*EXCLUDED, "strongest") and r is not None]
    return float(max(values)) if values else None


def quick_objective(ckpt: dict) -> dict:
    """The sweep's objective for a training checkpoint.

    Parameters
    ----------
    ckpt : dict
        A checkpoint of driver/train.py (:func:`aits.load_checkpoint`).

    Returns
    -------
    dict
        ``objective``: the median over the quick suite's systems of learned / strongest classical
        max |dE/E| at equal force evaluations (dimensionless; below 1: the learned rule wins; inf
        when the learned run fails on a system), and ``systems``: {system name: that ratio or None}.
        Scored without the IAS15 reference (the ratio does not use it), without logh and without the
        equal-wall-time runs (a fifth of a scoring's runs).
    """
    from aits import scoreboard
    from aits.policy import learned_methods

    cfg = Config.from_dict(ckpt["config"])
    s = cfg.system
    learned = {"learned": learned_methods(ckpt, cfg)["learned"]}  # the rule as trained; no second form
    # the classical candidates for "strongest" only: logh is a reference row, not run here
    families = scoreboard.CLASSICAL
    per_system = {}
    for system in scoreboard.suite_systems("quick", s.num_particles, s.dim, s.softening, s.mass):
        entry = scoreboard.score_system(system, learned, n_steps=s.n_steps, baselines=families, reference=False,
                                        wall=False)
        per_system[system.name] = strongest_ratio(entry)
    values = [math.inf if r is None else r for r in per_system.values()]
    return {"objective": float(np.median(values)), "systems": per_system}


# ---------------------------------------------------------------- one trial
def numeric(row: dict) -> dict:
    """The finite numbers of a metrics row (what Tune can compare and plot)."""
    return {k: v for k, v in row.items() if isinstance(v, (bool, int, float)) and math.isfinite(float(v))}


class _Tee(io.TextIOBase):
    """stderr that is also kept, so a failed trial's error line becomes its Tune error."""

    def __init__(self, stream):
        self.stream, self.kept = stream, io.StringIO()

    def write(self, text):
        self.kept.write(text)
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()


def run_trial(params: dict, setup: dict) -> None:
    """Tune's function trainable: one training run, its metrics to Tune every epoch, the objective
    and a Tune checkpoint every ``metric_every`` epochs and at the end."""
    from ray import tune

    from driver.train import train

    name = TRIAL_PREFIX + tune.get_context().get_trial_id()
    values = {k: plain(params[k]) for k in setup["keys"]}
    cfg = Config.from_dict(trial_dict(setup, values, name))
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    state = {"objective": math.nan, "objective_epoch": 0, "systems": {}}
    ckpt = None
    resumed = tune.get_checkpoint()
    if resumed is not None:  # a restored sweep: continue from the trial's last Tune checkpoint
        with resumed.as_directory() as folder:
            ckpt = load_checkpoint(next(Path(folder).glob("model_epoch_*.pt")))
            state = json.loads((Path(folder) / "objective.json").read_text())
    elif (run_dir / "model").exists():  # a restart before its first checkpoint: start clean
        shutil.rmtree(run_dir / "model")
    every, epochs = cfg.run.checkpoint_interval, cfg.train.epochs

    def on_epoch(epoch, row, *_):
        checkpoint = folder = None
        if epoch % every == 0 or epoch == epochs:
            path = checkpoint_path(run_dir, epoch)
            state.update(quick_objective(load_checkpoint(path)), objective_epoch=epoch)
            folder = run_dir / "tune_checkpoint"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            shutil.copy2(path, folder / path.name)
            (folder / "objective.json").write_text(json.dumps(state))
            checkpoint = tune.Checkpoint.from_directory(str(folder))
        # ASHA reads "objective" at its rungs (multiples of metric_every): always a fresh value there
        # first keys first: Tune's status table shows the first few metrics of a result
        tune.report({"epoch": epoch, "objective": state["objective"], "objective_epoch": state["objective_epoch"],
                     **numeric(row)}, checkpoint=checkpoint)

    tee = _Tee(sys.stderr)
    with contextlib.redirect_stderr(tee):
        code = train(cfg, ckpt, on_epoch=on_epoch)
    if code != 0:
        lines = [ln for ln in tee.kept.getvalue().splitlines() if ln.startswith("error:")]
        raise RuntimeError(lines[-1] if lines else f"training exited with code {code}")


# ---------------------------------------------------------------- the sweep
def prepare(args) -> tuple[dict, Path]:
    """(setup, out dir) from the command line (fresh) or from DIR/sweep.json (--resume); SweepError
    before anything is written or started."""
    out = Path(args.out).resolve()
    saved = out / "sweep.json"
    if args.resume:
        if not saved.exists() or not (out / "tune" / EXPERIMENT).is_dir():
            raise SweepError(f"--resume: {out} holds no sweep to continue (no sweep.json / tune/{EXPERIMENT})")
        try:
            setup = json.loads(saved.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SweepError(f"--resume: {saved} unreadable ({type(exc).__name__})") from None
        if args.config or args.space:
            print("note: --resume continues the saved sweep; --config/--space/--samples are taken from "
                  f"{saved}", file=sys.stderr)
        return setup, out
    try:
        cfg = Config.load(args.config, args.overrides)
    except ConfigError as exc:
        raise SweepError(exc.problems[0]) from None
    base = cfg.to_dict()
    if cfg.system.ic_path:  # trials run in Tune's trial folders: relative paths would break
        base["system"]["ic_path"] = str(Path(cfg.system.ic_path).resolve())
    epochs = args.epochs or cfg.train.epochs
    every = min(args.metric_every or cfg.run.checkpoint_interval, epochs)
    base_for_check = with_values(base, {"train.epochs": epochs, "run.checkpoint_interval": every,
                                        "ray.inprocess": True})
    space = load_space(args.space, base_for_check)
    # fixed entries of the space become part of the base every trial (and best.yaml) starts from
    base = Config.from_dict(with_values(base, {k: s.args[0] for k, s in space.items() if not s.swept})).to_dict()
    if saved.exists() or (out / "tune").exists():
        raise SweepError(f"--out: {out} already holds a sweep; continue it with --resume or pick another --out")
    if args.scheduler == "asha" and every >= epochs:
        print(f"warning: the objective is measured only at the end (--metric-every {every} >= {epochs} epochs): "
              "ASHA cannot stop a trial early; lower --metric-every", file=sys.stderr)
    setup = {"base": base, "space": {k: s.raw for k, s in space.items()},
             "keys": [k for k, s in space.items() if s.swept], "samples": args.samples,
             "scheduler": args.scheduler, "epochs": epochs, "metric_every": every,
             "trial_cpus": args.trial_cpus, "trial_gpus": cfg.ray.learner_gpus,
             "config_path": str(Path(args.config).resolve()), "space_path": str(Path(args.space).resolve()),
             "trials_dir": str(out / "trials"), "wall_s": 0.0}
    return setup, out


def specs_of(setup: dict) -> dict[str, Spec]:
    """The saved space's Specs (validated when the sweep started)."""
    fields = config_fields()
    return {k: parse_spec(k, raw, is_int_key(fields[k])) for k, raw in setup["space"].items()}


def trainable(setup: dict):
    from ray import tune

    resources = {"cpu": setup["trial_cpus"], "gpu": setup["trial_gpus"]}
    return tune.with_resources(tune.with_parameters(run_trial, setup=setup), resources)


def build_tuner(setup: dict, out: Path):
    """A fresh Tuner for the sweep ``setup`` writing under ``out/tune``."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    specs = specs_of(setup)
    param_space = {k: s.to_tune() for k, s in specs.items() if s.swept}
    if setup["scheduler"] == "asha":
        # time_attr "epoch" and grace = metric_every: every rung is an epoch at which the objective was measured
        scheduler = ASHAScheduler(time_attr="epoch", max_t=setup["epochs"], grace_period=setup["metric_every"],
                                  reduction_factor=REDUCTION_FACTOR)
    else:
        scheduler = FIFOScheduler()
    seed = setup["base"]["run"]["seed"]
    tune_config = tune.TuneConfig(metric="objective", mode="min", num_samples=setup["samples"],
                                  scheduler=scheduler, search_alg=BasicVariantGenerator(random_state=seed),
                                  trial_dirname_creator=lambda t: TRIAL_PREFIX + t.trial_id)
    run_config = tune.RunConfig(name=EXPERIMENT, storage_path=str(out / "tune"),
                                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                failure_config=tune.FailureConfig(max_failures=0), verbose=1)
    return tune.Tuner(trainable(setup), param_space=param_space, tune_config=tune_config, run_config=run_config)


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        setup, out = prepare(args)
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import ray
    from ray import tune

    from driver.backends import start_ray

    # Tune prints the progress (a bar per trial garbles it); workers of a Ray started here inherit this
    os.environ.setdefault("TQDM_DISABLE", "1")
    # num_to_keep forces an experiment snapshot at each trial checkpoint (what a resume needs): expected here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    out.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        write_json(out / "sweep.json", setup)
    owns = start_ray(Config.from_dict(setup["base"]))  # joins RAY_ADDRESS under `ray job submit`
    try:
        start = time.perf_counter()
        if args.resume:
            tuner = tune.Tuner.restore(str(out / "tune" / EXPERIMENT), trainable=trainable(setup),
                                       resume_unfinished=True)
        else:
            tuner = build_tuner(setup, out)
        grid = tuner.fit()
        setup["wall_s"] = setup.get("wall_s", 0.0) + time.perf_counter() - start
        write_json(out / "sweep.json", setup)
        rows = trial_rows(grid, setup, out)
    finally:
        if owns:
            ray.shutdown()
    report, finished = write_outputs(rows, setup, out)
    print(report, flush=True)
    return 0 if finished else 130  # Ctrl-C: Tune stopped the sweep and saved its state


# ---------------------------------------------------------------- outputs
def metric(metrics: dict, name: str):
    """A metrics row's value under the collect phase's or generalize phase's prefix (``part1/`` and
    ``part2/``, or the older ``collect/`` and ``generalize/``)."""
    for prefix in ("part1/", "part2/", "collect/", "generalize/"):
        if prefix + name in metrics:
            return metrics[prefix + name]
    return None


def trial_rows(grid, setup: dict, out: Path) -> list[dict]:
    """One row per trial: its values, objective (and the epoch it was measured at), epochs, status."""
    from ray.tune import ExperimentAnalysis

    # statuses as saved for a resume: after Ctrl-C the live trials read TERMINATED, the saved ones RUNNING
    trials = {t.trial_id: t for t in ExperimentAnalysis(str(out / "tune" / EXPERIMENT)).trials}
    rows = []
    for result in grid:
        m = result.metrics or {}
        trial_id = m.get("trial_id") or Path(result.path).name.removeprefix(TRIAL_PREFIX)
        trial = trials.get(trial_id)
        status = trial.status if trial is not None else "UNKNOWN"
        epochs = int(m.get("epoch", 0))
        if result.error is not None:
            text = str(result.error).strip().splitlines()
            state = "error: " + (next((ln for ln in reversed(text) if ln.startswith(("RuntimeError", "error"))),
                                      text[-1] if text else "") if text else "")
        elif status == "TERMINATED":
            state = "complete" if epochs >= setup["epochs"] else f"stopped early ({setup['scheduler']})"
        else:
            state = "not run" if not epochs else f"interrupted ({status.lower()})"
        objective = m.get("objective")
        if objective is not None and not math.isfinite(objective):
            objective = None if math.isnan(objective) else objective
        config = result.config or (trial.config if trial is not None else {})  # a trial not run has no result
        values = {k: plain(config.get(k)) for k in setup["keys"]}
        systems = {}
        if result.checkpoint is not None:
            with result.checkpoint.as_directory() as folder:
                systems = json.loads((Path(folder) / "objective.json").read_text()).get("systems", {})
        rows.append({"trial": TRIAL_PREFIX + trial_id, "values": values, "objective": objective,
                     "objective_epoch": int(m.get("objective_epoch", 0)), "epochs": epochs, "status": state,
                     "time_s": m.get("time_total_s"), "systems": systems,
                     "final": {"pass_rate_first": metric(m, "pass_rate_first"),
                               "dt_over_classical": metric(m, "dt_over_classical"), "loss": metric(m, "loss")},
                     "run_dir": str(Path(setup["trials_dir"]) / (TRIAL_PREFIX + trial_id))})
    return sorted(rows, key=sort_key)


def sort_key(row: dict):
    complete = row["status"] == "complete"
    obj = row["objective"] if row["objective"] is not None else math.inf
    return (not complete, obj, row["trial"])


def best_row(rows: list[dict]) -> dict | None:
    """The lowest objective among trials that ran every epoch (their objectives compare at equal
    training); among all measured trials when none did."""
    done = [r for r in rows if r["status"] == "complete" and r["objective"] is not None]
    measured = done or [r for r in rows if r["objective"] is not None]
    return min(measured, key=sort_key) if measured else None


def write_outputs(rows: list[dict], setup: dict, out: Path) -> tuple[str, bool]:
    """results.json, results.md, objective.png and best.yaml; returns (the text to print, whether
    every trial has finished)."""
    best = best_row(rows)
    finished = all(r["status"] == "complete" or r["status"].startswith(("stopped early", "error")) for r in rows)
    summary = {"config": setup["config_path"], "space": setup["space"], "samples": setup["samples"],
               "scheduler": setup["scheduler"], "epochs": setup["epochs"], "metric_every": setup["metric_every"],
               "trial_cpus": setup["trial_cpus"], "wall_s": setup["wall_s"], "finished": finished,
               "objective": "median over the quick suite of learned / strongest classical max |dE/E| "
                            "at equal force evaluations (lower is better)",
               "best": best["trial"] if best else None}
    write_json(out / "results.json", {"sweep": summary, "trials": rows})
    table = results_table(rows, setup)
    head = (f"# Sweep: {len(rows)} trials, {setup['scheduler']}, {setup['epochs']} epochs, objective every "
            f"{setup['metric_every']}\n\nBase `{setup['config_path']}`; objective: {summary['objective']}; "
            f"wall time {setup['wall_s']:.0f} s.\n\n")
    (out / "results.md").write_text(head + table + "\n")
    plot_objective(rows, setup, out / "objective.png")
    lines = [table, f"wall time: {setup['wall_s']:.0f} s; outputs in {out}"]
    if best is not None:
        write_best(best, setup, out / "best.yaml")
        lines.append(f"best: {best['trial']} objective {best['objective']:.4g}; "
                     f"train it with: python driver/train.py --config {out / 'best.yaml'}")
    if not finished:
        lines.append(f"sweep interrupted: continue with aits-sweep --out {out} --resume")
    return "\n".join(lines), finished


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def results_table(rows: list[dict], setup: dict) -> str:
    keys = setup["keys"]
    head = ["trial", *keys, "objective", "at epoch", "epochs", "status", "time s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["trial"], *(fmt(r["values"][k]) for k in keys), fmt(r["objective"]),
                 str(r["objective_epoch"] or "-"), str(r["epochs"]), r["status"], fmt(r["time_s"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_objective(rows: list[dict], setup: dict, path: Path) -> None:
    """The objective against each swept key: one panel per key, complete trials filled, trials stopped
    early hollow (their objective is from fewer epochs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import NullFormatter

    specs = specs_of(setup)
    keys = setup["keys"]
    ncols = min(len(keys), 3)
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.5 * nrows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    measured = [r for r in rows if r["objective"] is not None and math.isfinite(r["objective"])]
    for ax, key in zip(axes.flat, keys):
        spec = specs[key]
        categorical = spec.kind in ("choice", "grid")
        labels = [str(v) for v in spec.args[0]] if categorical else []
        for r in measured:
            v = r["values"][key]
            x = labels.index(str(v)) if categorical and str(v) in labels else v
            done = r["status"] == "complete"
            ax.scatter([x], [r["objective"]], s=36, facecolors="C0" if done else "none", edgecolors="C0")
        if categorical:
            ax.set_xticks(range(len(labels)), labels, rotation=20)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        elif spec.log_scale():
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide within a decade
            low, high = spec.args
            ax.set_xlim(low / (high / low) ** 0.04, high * (high / low) ** 0.04)  # the range searched
        else:
            low, high = spec.args
            ax.set_xlim(low - 0.04 * (high - low), high + 0.04 * (high - low))
        ys = [r["objective"] for r in measured]
        if ys and min(ys) > 0 and max(ys) / min(ys) > 20:
            ax.set_yscale("log")
        ax.axhline(1.0, color="0.6", lw=0.8, ls="--")
        ax.set_xlabel(key)
        ax.set_ylabel("objective (learned / strongest)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{len(measured)} trials, {setup['epochs']} epochs (hollow: stopped early); lower is better",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_best(best: dict, setup: dict, path: Path) -> None:
    """The base config with the best trial's values: what `driver/train.py --config` trains as it is
    (the base's epochs, actors and W&B; run name <base name>_sweep_best)."""
    base = setup["base"]
    swept = ", ".join(f"{k} = {best['values'][k]!r}" for k in setup["keys"])
    cfg = Config.from_dict(with_values(base, {**best["values"], "run.name": f"{base['run']['name']}_sweep_best"}))
    head = (f"# Best of the sweep in {path.parent} ({best['trial']}): objective {best['objective']:.4g} "
            f"(median learned / strongest, quick suite) after {best['epochs']} of {setup['epochs']} epochs.\n"
            f"# Swept: {swept}.\n"
            f"# Everything else is the base config {setup['config_path']}, with its train.epochs "
            f"({base['train']['epochs']}); the sweep trained {setup['epochs']}.\n")
    text = head + yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
    Config.from_dict(yaml.safe_load(text))  # what train.py will read back
    path.write_text(text)


def write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())

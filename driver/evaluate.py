"""The evaluation command: judge checkpoints against the classical step rules at equal force
evaluations and equal wall time, on a suite of test systems or on your own.

    python driver/evaluate.py --checkpoint CKPT [CKPT ...] [--suite SUITE] [--out DIR] [--workers N]
    python driver/evaluate.py --checkpoint CKPT --system bodies.txt --duration 20

Writes ``DIR/scoreboard.json``, ``DIR/scoreboard.md`` and plots (``DIR/<system>.png``: the bodies'
x-y paths of the learned run and of the strongest classical rule beside |dE/E| and dt against time;
``DIR/cost.png``: max |dE/E| against force evaluations), ``DIR/index.html`` (the tables, plots and
movies on one page; ``--no-report`` skips it) and, with ``--movie``, orbit movies (docs/REPORT.md).
Suites: quick, standard, practitioner, practitioner_quick. Every method runs on the one numpy loop of
``aits.integrators``. Systems run in parallel as Ray tasks (``--workers``, default: the cores), in
this process with ``--workers 1``. See README "Is my checkpoint worth using?" and docs/DESIGN.md §6.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from aits import CheckpointError, ConfigError, build_model, config_from_checkpoint, load_checkpoint
from aits.checkpoint import fit_weights
from aits.scoreboard import (BASELINES, CLASSICAL, SUITES, file_system, range_checks, score_system, suite_systems,
                             summarize)
from driver.backends import map_tasks
from driver.movie import evaluation_movies, movie_format, movie_systems
from driver.report import write_report

# Cap on the learned run's steps: a rule far too cautious for a system ends as max_steps, not as a hang.
MAX_LEARNED_STEPS = 1_000_000


class InputError(Exception):
    """Bad user input; the message is the one line the user sees."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise InputError(message)


def parse_args(argv):
    p = _Parser(prog="evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", nargs="+", required=True, metavar="CKPT",
                   help="training checkpoints (model_epoch_XXXX.pt); several = several training seeds")
    p.add_argument("--suite", choices=SUITES, default=None,
                   help="quick (default without --system), standard (the checkpoint's own kind of system), "
                        "practitioner (public problems, any N), practitioner_quick")
    p.add_argument("--system", action="append", default=[], metavar="FILE",
                   help="your own system: an IC file of rows [m, x..., v...] (repeatable); needs --duration")
    p.add_argument("--duration", metavar="T",
                   help="for --system: time units, <k>P (two-body periods) or <k>tc (crossing times)")
    p.add_argument("--softening", type=float, default=0.0, help="for --system: Plummer softening (default 0)")
    p.add_argument("--bodies", type=int, metavar="N",
                   help="quick/standard suites: systems of N bodies (2: Kepler orbits) instead of the checkpoint's N")
    p.add_argument("--max-steps", type=int, default=MAX_LEARNED_STEPS,
                   help=f"cap on the learned run's steps (status max_steps; default {MAX_LEARNED_STEPS})")
    p.add_argument("--out", help="output folder (default: scoreboard_<suite>)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="parallel Ray tasks (default: the cores); 1 runs in this process")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-report", action="store_true", help="skip DIR/index.html (docs/REPORT.md)")
    p.add_argument("--movie", action="store_true", help="orbit movies, the learned rule beside the strongest "
                   "classical one: each long or practitioner system (docs/REPORT.md)")
    p.add_argument("--movie-system", action="append", metavar="NAME", help="film this system (repeatable; implies --movie)")
    p.add_argument("--movie-frames", type=int, default=120, help="frame budget per movie (default 120)")
    p.add_argument("--movie-fps", type=float, default=20.0, help="movie frames per second (default 20)")
    p.add_argument("--movie-dpi", type=int, default=80, help="movie resolution: 80 = 1024 x 576 pixels (default)")
    p.add_argument("--movie-format", choices=("auto", "mp4", "gif"), default="auto",
                   help="auto: MP4 when an ffmpeg encoder is found, else GIF")
    args = p.parse_args(argv)
    if args.workers < 1:
        raise InputError(f"--workers: must be >= 1, got {args.workers}")
    if args.bodies is not None and args.bodies < 2:
        raise InputError(f"--bodies: must be >= 2, got {args.bodies}")
    if args.max_steps < 1:
        raise InputError(f"--max-steps: must be >= 1, got {args.max_steps}")
    if args.system and not args.duration:
        raise InputError("--system needs --duration (time units, <k>P or <k>tc)")
    if args.duration and not args.system:
        raise InputError("--duration applies to --system only")
    if args.suite is None and not args.system:
        args.suite = "quick"
    for flag, value, low in (("--movie-frames", args.movie_frames, 2), ("--movie-fps", args.movie_fps, 0.01),
                             ("--movie-dpi", args.movie_dpi, 10)):
        if value < low:
            raise InputError(f"{flag}: must be >= {low:g}, got {value:g}")
    args.movie = args.movie or bool(args.movie_system)
    try:
        args.movie_format = movie_format(args.movie_format) if args.movie else args.movie_format
    except ValueError as exc:
        raise InputError(f"--movie-format: {exc}") from None
    return args


# ---------------------------------------------------------------- one task
def score_task(ckpt_path: str, system, n_steps: int, max_steps: int = 0) -> dict:
    """Load the checkpoint's policy and score one system (one Ray task, one thread); the learned
    rule's features see the system's own softening. A checkpoint with a training box (``feature_ranges``)
    is scored with its range check (``learned``) and also without it (``learned_unchecked``), side by side."""
    import torch

    from aits.policy import checkpoint_ranges, learned_methods

    torch.set_num_threads(1)
    ckpt = load_checkpoint(ckpt_path)
    methods = learned_methods(ckpt, eps=system.eps)
    if checkpoint_ranges(ckpt) is not None and ckpt.get("config", {}).get("model", {}).get("max_modulation"):
        methods["learned_unchecked"] = learned_methods(ckpt, eps=system.eps, range_check=False)["learned"]
        methods["learned_unchecked"].name = "learned_unchecked"
    return score_system(system, methods, n_steps=n_steps,
                        max_steps=max_steps or MAX_LEARNED_STEPS)


def user_systems(files: list[str], duration: str | None, eps: float) -> list:
    """The ``--system`` files as scoreboard systems; InputError with one line for a bad file or duration."""
    out = []
    for path in files:
        try:
            out.append(file_system(path, duration, eps))
        except ValueError as exc:
            raise InputError(str(exc)) from None
    return out


def checkpoint_jobs(paths: list[str], suite: str | None, extra_systems: list | None = None,
                    bodies: int | None = None) -> tuple[dict, list]:
    """({label: info}, [(label, path, system, n_steps)]): the suite's systems (if any) and
    ``extra_systems`` for each checkpoint; raises InputError for an unusable checkpoint."""
    infos, jobs, seen = {}, [], set()
    for path in paths:
        try:
            ckpt = load_checkpoint(path)
            cfg = config_from_checkpoint(ckpt)
            fit_weights(build_model(cfg), ckpt, path)
        except (CheckpointError, ConfigError) as exc:
            raise InputError(str(exc).splitlines()[0]) from None
        if "model_state_dict" not in ckpt or not ckpt.get("config"):
            raise InputError(f"checkpoint {path}: no model_state_dict/config: not written by driver/train.py")
        label = f"{cfg.run.name}/{Path(path).stem}"
        while label in seen:
            label += "+"
        seen.add(label)
        s = cfg.system
        infos[label] = {"path": str(Path(path).resolve()), "epoch": ckpt.get("epoch"), "run_name": cfg.run.name,
                        "seed": cfg.run.seed, "config_summary": ckpt.get("config_summary"),
                        "N": s.num_particles, "D": s.dim, "softening": s.softening, "n_steps": s.n_steps,
                        "model_output": getattr(cfg.model, "output", "dt"),
                        "range_check": bool(ckpt.get("feature_ranges")) and cfg.model.max_modulation is not None}
        if not suite:
            systems = []
        elif bodies and bodies != s.num_particles:
            # another N: unit masses (the checkpoint's belong to its N); Kepler orbits in 2-D, unsoftened
            two = bodies == 2
            systems = suite_systems(suite, bodies, 2 if two else s.dim, 0.0 if two else s.softening)
        else:
            systems = suite_systems(suite, s.num_particles, s.dim, s.softening, s.mass)
        for system in [*systems, *(extra_systems or [])]:
            jobs.append((label, str(path), system, s.n_steps))
    return infos, jobs


def run_jobs(jobs: list, workers: int, desc: str, max_steps: int = MAX_LEARNED_STEPS) -> list[dict]:
    """Results in job order; Ray tasks when ``workers`` > 1, with a progress bar either way."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=desc, unit="system", dynamic_ncols=True)
    try:
        # Longest systems first: the pool drains evenly (in this process, the order of the suite).
        order = None if workers == 1 else sorted(range(len(jobs)),
                                                 key=lambda i: -jobs[i][2].duration * len(jobs[i][2].m))
        return map_tasks(score_task, [(path, system, ns, max_steps) for _, path, system, ns in jobs], workers,
                         lambda i, r: bar.update(1), order)
    finally:
        bar.close()


# ---------------------------------------------------------------- report
def build_report(suite: str, infos: dict, jobs: list, results: list, wall: float) -> tuple[dict, dict]:
    """(scoreboard dict, plot data per label and system)."""
    by_ckpt: dict[str, dict] = {label: {} for label in infos}
    plots: dict[str, dict] = {label: {} for label in infos}
    for (label, _, system, _), entry in zip(jobs, results):
        plots[label][system.name] = entry.pop("_plot")
        by_ckpt[label][system.name] = entry
    several = len(infos) > 1
    board = {"suite": suite, "checkpoints": [{"label": k, **v} for k, v in infos.items()],
             "systems": by_ckpt if several else next(iter(by_ckpt.values())),
             "systems_keyed_by_checkpoint": several,
             "summary": summarize(by_ckpt), "wall_time_s": wall}
    return clean(board), plots


def clean(obj):
    """JSON-safe: numpy scalars to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def fmt(x, digits=2) -> str:
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    return f"{x:.{digits}g}" if abs(x) >= 1e-3 and abs(x) < 1e4 else f"{x:.{digits}e}"


def systems_by_label(board: dict) -> dict:
    """{checkpoint label: {system: entry}} of a board, whether it holds one checkpoint or several."""
    return board["systems"] if board["systems_keyed_by_checkpoint"] else {
        board["checkpoints"][0]["label"]: board["systems"]}


def _headline_line(h: dict) -> str:
    return (f"learned / strongest max |ΔE/E|, median over {h['systems']} systems: {fmt(h['energy_equal_evals'])} at "
            f"equal force evaluations (worst {fmt(h['energy_worst_equal_evals'])}), {fmt(h['energy_equal_wall'])} at "
            f"equal wall time; position error: {fmt(h['trajectory_equal_evals'])} (evals), "
            f"{fmt(h['trajectory_equal_wall'])} (wall); "
            + (f"energy band: {fmt(h['energy_band_equal_evals'])} (evals); " if h.get('energy_band_equal_evals') is not None else "")
            + f"learned runs not ok: {h['not_ok']} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(h['learned_status'].items()))})"
            + ("" if "held_systems" not in h else
               f"; held at the classical rule by the range check on most steps: {len(h['held_systems'])}"
               + (f" ({', '.join(h['held_systems'])})" if h["held_systems"] else "")))


CLIP_NOTED = 0.01  # a learned run whose recursion clip acted on more steps than this is named under its table


def clip_lines(sysd: dict) -> list[str]:
    """One line naming the systems where the learned run's recursion clip acted on more than ``CLIP_NOTED`` of its
    steps (the step not h^2 / dt_prev: the map not reversible there, the usual cause of an energy drift), with its
    strongest classical rule's share beside it where that is a clipped recursion too; none when no run passed it."""
    noted = []
    for name, e in sysd.items():
        share = e["methods"]["learned"].get("clip_share")
        if share is not None and share > CLIP_NOTED:
            strong = e["methods"].get(e.get("strongest") or "", {}).get("clip_share")
            noted.append(f"{name} {100 * share:.0f} %" + ("" if strong is None else
                                                           f" ({e['strongest']} {100 * strong:.0f} %)"))
    if not noted:
        return []
    return [f"The learned recursion's clip acted (the step not h²/dt_prev: not reversible there) on more than "
            f"{100 * CLIP_NOTED:.0f} % of the steps on: " + ", ".join(noted) + ".", ""]


def range_check_lines(sysd: dict) -> list[str]:
    """The range-check table of one checkpoint's systems (markdown lines; none when its learned runs had no
    range check): per system the shares of the learned run's steps outside the training box and held at the
    classical rule, the mean w and the feature most often furthest outside (aits.ranges.RangeTally)."""
    checked = range_checks(sysd)
    if not checked:
        return []
    lines = ["Range check of the learned run: the share of its steps whose features lay outside the training box, "
             "the share it held at the classical rule (w < 0.5), the mean w, and the feature most often furthest "
             "outside:", "", "| system | outside | held | mean w | furthest outside |", "|---|---|---|---|---|"]
    for name, rc in checked.items():
        lines.append(f"| {name} | {rc['outside_share']:.2f} | {rc['held_share']:.2f} | {rc['mean_weight']:.2f} | "
                     f"{next(iter(rc['features']), '–')} |")
    return lines + [""]


def markdown(board: dict) -> str:
    lines = [f"# Scoreboard: suite `{board['suite']}`", "",
             f"{len(board['checkpoints'])} checkpoint(s); wall time {board['wall_time_s']:.0f} s. Ratios are "
             "learned / baseline (< 1: learned better) of max |ΔE/E| and of the position error against IAS15 "
             "(relative to the system's size, at the trajectory horizon), at equal force evaluations (`evals`) "
             "and at equal wall time (`wall`). `strongest`: the classical KDK rule (any timescale, any form) "
             "with the smallest max |ΔE/E| at equal evaluations on that system.", ""]
    summ = board["summary"]
    for label, h in summ["headline"].items():
        lines.append(f"- **{label}**: " + _headline_line(h))
    if "headline_across_checkpoints" in summ:
        lines += ["", "Over checkpoints (median [min, max] of each checkpoint's median):", ""]
        for key, st in summ["headline_across_checkpoints"].items():
            lines.append(f"- {key}: {fmt(st['median'])} [{fmt(st['min'])}, {fmt(st['max'])}] (n = {st['n']})")
    lines.append("")
    for label, sysd in systems_by_label(board).items():
        lines += [f"## {label}", "",
                  "| system | learned max \\|ΔE/E\\| | evals | status | strongest | / strongest (evals) | "
                  "/ strongest (wall) | position error | pos. / strongest (evals) | pos. / strongest (wall) | "
                  "horizon | drift slope | ias15 evals | energy band / smallest band (evals) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, e in sysd.items():
            lm = e["methods"]["learned"]
            tr = e.get("trajectory", {})
            hz = "–" if not tr else (f"{fmt(tr['horizon'])}" + (" (chaotic)" if tr["chaotic"] else "")
                                    + ("" if tr["ranked"] else " unranked"))
            ias = e["methods"].get("ias15", {})
            lines.append(
                f"| {name} | {fmt(lm['max_rel_dE'])} | {lm['force_evals']} | {lm['status']} | {e.get('strongest') or '–'} | "
                f"{fmt(e['ratios']['equal_force_evals'].get('strongest'))} | {fmt(e['ratios']['equal_wall_time'].get('strongest'))} | "
                f"{fmt(lm.get('position_error_rel'))} | {fmt(e['ratios_trajectory']['equal_force_evals'].get('strongest'))} | "
                f"{fmt(e['ratios_trajectory']['equal_wall_time'].get('strongest'))} | {hz} | {fmt(lm['drift_slope'])} | "
                f"{ias.get('force_evals', '–')} | "
                + (f"{fmt(e['ratios_band']['equal_force_evals'].get('strongest'))} ({e.get('strongest_band') or '–'})"
                   if "ratios_band" in e else "–") + " |")
        lines.append("")
        lines += clip_lines(sysd)
        lines += range_check_lines(sysd)
        lines += ["Learned / each baseline, max |ΔE/E| at equal force evaluations (equal wall time):", "",
                  "| system | " + " | ".join(BASELINES) + " |", "|---|" + "---|" * len(BASELINES)]
        for name, e in sysd.items():
            cells = [f"{fmt(e['ratios']['equal_force_evals'].get(b))} ({fmt(e['ratios']['equal_wall_time'].get(b))})"
                     for b in BASELINES]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += ["| system | method | evals | steps | wall s | max \\|ΔE/E\\| | energy band | final \\|ΔE/E\\| | "
                  "drift slope | pos. error / size | status |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, e in sysd.items():
            for meth, mm in e["methods"].items():
                lines.append(f"| {name} | {meth} | {mm['force_evals']} | {mm['steps']} | {fmt(mm['wall_time_s'])} | "
                             f"{fmt(mm['max_rel_dE'])} | {fmt(mm.get('band_rel_dE'))} | {fmt(mm['final_rel_dE'])} | "
                             f"{fmt(mm.get('drift_slope'))} | "
                             f"{fmt(mm.get('position_error_rel'))} | {mm['status']} |")
        lines.append("")
    lines += ["## Summary", ""]
    if "per_system" in summ:
        lines += ["Per system over checkpoints, median [min, max] of learned / strongest (max |ΔE/E|; position error "
                  "at the horizon), the strongest family per checkpoint and the learned runs' statuses:", "",
                  "| system | strongest | energy, equal evals | energy, equal wall | position, equal evals | "
                  "position, equal wall | learned status |", "|---|---|---|---|---|---|---|"]

        def cell(st, comp):
            ev = st.get(comp, {}).get("strongest")
            return "–" if ev is None else f"{fmt(ev['median'])} [{fmt(ev['min'])}, {fmt(ev['max'])}]"

        for name, st in summ["per_system"].items():
            names = st.get("strongest", [])
            fams = ", ".join(f"{f} ×{names.count(f)}" for f in dict.fromkeys(names) if f)
            stats = ", ".join(f"{x} ×{st['learned_status'].count(x)}" for x in dict.fromkeys(st["learned_status"]))
            lines.append(f"| {name} | {fams} | {cell(st, 'equal_force_evals')} | {cell(st, 'equal_wall_time')} | "
                         f"{cell(st, 'trajectory_equal_force_evals')} | {cell(st, 'trajectory_equal_wall_time')} | "
                         f"{stats} |")
        lines.append("")
        comps = ("strongest", *CLASSICAL)
        lines += ["Per system over checkpoints, median [min, max] of learned / baseline max |ΔE/E| at equal force "
                  "evaluations, and of the learned run's drift slope:", "",
                  "| system | " + " | ".join(f"/ {b}" for b in comps) + " | learned drift slope |",
                  "|---|" + "---|" * len(comps) + "---|"]
        for name, st in summ["per_system"].items():
            cells = []
            for b in comps:
                ev = st.get("equal_force_evals", {}).get(b)
                cells.append("–" if ev is None else f"{fmt(ev['median'])} [{fmt(ev['min'])}, {fmt(ev['max'])}]")
            sl = st.get("learned_drift_slope")
            cells.append(f"{fmt(sl['median'])} [{fmt(sl['min'])}, {fmt(sl['max'])}]" if sl else "–")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot_files(plots: dict, board: dict) -> dict[str, bytes]:
    """PNG bytes by file name: per system (first checkpoint) ``<system>.png``, and ``cost.png``.

    ``<system>.png``: left, the bodies' x-y paths (D >= 2; series with ``x``) of the learned run and of
    the best classical baseline (the board's ``strongest`` for the system, else the baseline with the
    lowest max |dE/E| among the series); right, |dE/E| and dt against time for every method, the
    baselines at equal force evaluations.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def worst(ser) -> float:  # max |dE/E| of a series; a NaN (a destroyed run) counts as infinite
        r = np.asarray(ser["rel_dE"], dtype=float)
        return float(r.max()) if r.size and not np.isnan(r).any() else math.inf

    files = {}
    first = next(iter(plots))
    entries = board.get("systems", {})
    entries = entries.get(first, {}) if board.get("systems_keyed_by_checkpoint") else entries
    for name, data in plots[first].items():
        series = {meth: ser for meth, ser in data["series"].items() if ser}
        palette = [f"C{i}" for i in range(10)] if len(series) <= 10 else list(plt.get_cmap("tab20").colors)
        colors = {meth: palette[i % len(palette)] for i, meth in enumerate(series)}
        learned = next((meth for meth in series if meth not in BASELINES and meth != "ias15"), None)
        best = named = (entries.get(name) or {}).get("strongest")
        if best not in series:  # no strongest named: the most accurate baseline plotted here
            finite = {meth: worst(ser) for meth, ser in series.items() if meth in BASELINES}
            finite = {meth: p for meth, p in finite.items() if math.isfinite(p)}
            best = min(finite, key=finite.get) if finite else None
        paths = [meth for meth in (learned, best)
                 if meth and len(np.shape(series[meth].get("x", []))) == 3 and np.shape(series[meth]["x"])[2] >= 2]
        if paths:
            fig = plt.figure(figsize=(15, 7))
            grid = fig.add_gridspec(2, 2, width_ratios=(1, 1.4))
            ax_orbit = fig.add_subplot(grid[:, 0])
            ax1 = fig.add_subplot(grid[0, 1])
            ax2 = fig.add_subplot(grid[1, 1], sharex=ax1)
        else:
            fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
        for meth, ser in series.items():
            ax1.semilogy(ser["t"], np.maximum(ser["rel_dE"], 1e-17), lw=0.8, color=colors[meth], label=meth)
            ax2.semilogy(ser["t"], np.maximum(ser["dt"], 1e-300), lw=0.8, color=colors[meth], label=meth)
        ax1.set_ylabel("|ΔE/E|")
        ax2.set_ylabel("dt")
        ax2.set_xlabel("t")
        ax1.legend(fontsize=7, ncol=1 + len(series) // 8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax1.set_title(f"{name} ({first}), baselines at equal force evaluations", fontsize=10)
        if paths:
            why = "strongest at equal evaluations" if best == named else "lowest max |ΔE/E|"
            for meth, style in zip(paths, ("-", "--")):
                x = np.asarray(series[meth]["x"], dtype=float)
                for i in range(x.shape[1]):
                    ax_orbit.plot(x[:, i, 0], x[:, i, 1], style, lw=0.8, color=colors[meth],
                                  label=(f"{meth} ({why})" if meth == best else meth) if i == 0 else None)
                ax_orbit.plot(x[-1, :, 0], x[-1, :, 1], "o", ms=4, color=colors[meth])  # where each run ends
            # Frame the more accurate path, so one diverging run cannot squash the picture.
            frame = min(paths, key=lambda meth: worst(series[meth]))
            xy = np.asarray(series[frame]["x"], dtype=float)[..., :2].reshape(-1, 2)
            xy = xy[np.isfinite(xy).all(axis=1)]
            if len(xy):  # a square frame: equal aspect without matplotlib moving the limits
                mid, half = 0.5 * (xy.min(0) + xy.max(0)), 0.55 * float(np.ptp(xy, axis=0).max()) + 1e-12
                ax_orbit.set_xlim(mid[0] - half, mid[0] + half)
                ax_orbit.set_ylim(mid[1] - half, mid[1] + half)
            ax_orbit.set_aspect("equal", adjustable="box")
            ax_orbit.set(xlabel="x", ylabel="y")
            ax_orbit.set_title("x-y paths (dots: the end)", fontsize=10)
            ax_orbit.legend(fontsize=8)
        fig.tight_layout()
        files[f"{name}.png"] = _png(fig, plt)
    names = list(plots[first])
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        merged: dict[str, list] = {}
        for label, per in plots.items():
            for meth, pts in per[name]["cost"].items():
                if meth in BASELINES:
                    merged.setdefault(meth, []).extend(pts)
                else:
                    ax.loglog(*zip(*pts), "o", ms=6, label=f"{meth} {label}" if len(plots) > 1 else meth)
        for meth, pts in merged.items():
            pts = sorted(p for p in pts if p[1] is not None and math.isfinite(p[1]) and p[1] > 0)
            if pts:
                ax.loglog(*zip(*pts), ".-", lw=0.8, label=meth)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("force evaluations")
        ax.set_ylabel("max |ΔE/E|")
    axes.flat[0].legend(fontsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    files["cost.png"] = _png(fig, plt)
    return files


def _png(fig, plt) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def print_summary(board: dict) -> None:
    for label, sysd in systems_by_label(board).items():
        print(f"== {label}")
        print(f"{'system':26s} {'learned':>9s} {'evals':>8s} {'status':>12s} {'strongest':>18s} "
              f"{'/strongest':>11s} {'(wall)':>7s} {'pos.err':>8s} {'/strongest':>11s}")
        for name, e in sysd.items():
            lm = e["methods"]["learned"]
            print(f"{name:26s} {fmt(lm['max_rel_dE']):>9s} {lm['force_evals']:>8d} {lm['status']:>12s} "
                  f"{e.get('strongest') or '–':>18s} {fmt(e['ratios']['equal_force_evals'].get('strongest')):>11s} "
                  f"{fmt(e['ratios']['equal_wall_time'].get('strongest')):>7s} {fmt(lm.get('position_error_rel')):>8s} "
                  f"{fmt(e['ratios_trajectory']['equal_force_evals'].get('strongest')):>11s}")
        print(_headline_line(board["summary"]["headline"][label]))


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        for p in args.checkpoint:
            if not Path(p).is_file():
                raise InputError(f"checkpoint {p}: not found")
        infos, jobs = checkpoint_jobs(args.checkpoint, args.suite,
                                      user_systems(args.system, args.duration, args.softening), args.bodies)
        first = next(iter(infos))
        try:
            filmed = movie_systems([j[2] for j in jobs if j[0] == first], args.movie_system) if args.movie else []
        except ValueError as exc:
            raise InputError(str(exc)) from None
    except InputError as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or f"scoreboard_{args.suite or 'system'}")
    start = time.perf_counter()
    suite = "+".join([*([args.suite] if args.suite else []), *(["system"] if args.system else [])])
    results = run_jobs(jobs, args.workers, f"suite {suite}", args.max_steps)
    board, plots = build_report(suite, infos, jobs, results, time.perf_counter() - start)
    files = {"scoreboard.json": json.dumps(board, indent=1).encode(), "scoreboard.md": markdown(board).encode()}
    if not args.no_plots:
        files.update(plot_files(plots, board))
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        write_atomic(out / name, data)
    movies = {}
    if filmed:  # the first checkpoint's runs, as the plots
        movies = evaluation_movies(out, systems_by_label(board)[first], plots[first], filmed, args.movie_frames,
                                   args.movie_fps, args.movie_dpi, args.movie_format, first)
    if not args.no_report:
        command = ["python", "driver/evaluate.py", *(sys.argv[1:] if argv is None else argv)]
        print(f"Report: {write_report(out, board, command, movies).resolve()}")
    print_summary(board)
    print(f"Scoreboard ({args.suite}, {len(infos)} checkpoint(s), {len(jobs)} system runs) in "
          f"{board['wall_time_s']:.0f} s: {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

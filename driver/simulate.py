"""Run a trained checkpoint as the time-stepper against fixed-dt and adaptive baselines (docs/DESIGN.md §6.1).

    python driver/simulate.py --checkpoint runs/ray_run/model/model_epoch_0100.pt
    python driver/simulate.py --checkpoint CKPT --orbit 0.9,1 --periods 5 --out sim_e09
    python driver/simulate.py --checkpoint CKPT --ic bodies.txt --duration 20

Writes ``DIR/report.json``, ``DIR/<system>_trajectories.npz`` and ``DIR/<system>.png``, prints a
table. Every file is written only after all systems are computed, each atomically. The systems run
as one batch per method (``aits.simulate.compare_many``): each wall time is the batch loop's until
that system ended.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from aits import (CheckpointError, ConfigError, DtModel, NormScales, Stepper, auto_norm_scales,
                  config_from_checkpoint, feature_dim, load_checkpoint)
from aits.physics import kepler_ic, kepler_period, load_ic_file, random_ic
from aits.simulate import METHODS, compare_many

DEFAULT_ORBITS = ((0.5, 1.0), (0.7, 1.0), (0.9, 1.0))
REF_SAMPLES = 600  # reference positions kept for the orbit plot


class InputError(Exception):
    """Bad user input; the message is the one line the user sees."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + error
        raise InputError(message)


# ---------------------------------------------------------------- arguments
def orbit_spec(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        e, a = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not 'e,a' (two numbers, e.g. 0.9,1)") from None
    if not (math.isfinite(e) and 0 <= e < 1):
        raise argparse.ArgumentTypeError(f"'{text}': eccentricity must lie in [0, 1), got {e:g}")
    if not (math.isfinite(a) and a > 0):
        raise argparse.ArgumentTypeError(f"'{text}': semi-major axis must be > 0, got {a:g}")
    return e, a


def _positive(kind):
    def parse(text: str):
        try:
            val = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a {kind.__name__}") from None
        if not (math.isfinite(val) and val > 0):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return val
    return parse


def parse_args(argv):
    p = _Parser(prog="simulate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="model_epoch_XXXX.pt written by driver/train.py")
    p.add_argument("--out", help="output folder (default: <run>/simulate/<checkpoint name>)")
    p.add_argument("--periods", type=_positive(float), default=3.0,
                   help="Kepler periods to integrate; for N-body systems, multiples of 2 pi sqrt(L^3/M)")
    p.add_argument("--duration", type=_positive(float), help="integration time (overrides --periods)")
    p.add_argument("--orbit", type=orbit_spec, nargs="+", action="extend", metavar="E,A",
                   help="Kepler test orbits (default 0.5,1 0.7,1 0.9,1 for two-body checkpoints)")
    p.add_argument("--ic", nargs="+", action="extend", metavar="FILE", help="IC files, rows [m, x..., v...]")
    p.add_argument("--random", type=_positive(int), nargs="+", action="extend", metavar="N",
                   help="random N-body systems with N bodies (drawn as the checkpoint's system config)")
    p.add_argument("--seed", type=int, help="seed of the random systems (default run.seed + 1)")
    p.add_argument("--max-steps", type=_positive(int), default=200_000, help="cap on the learned run's steps")
    p.add_argument("--no-reference", action="store_true", help="skip the REBOUND IAS15 reference")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override the checkpoint's config (e.g. system.softening=0.01)")
    return p.parse_args(argv)


# ---------------------------------------------------------------- checkpoint
def restore(path, overrides):
    """Checkpoint -> (ckpt, cfg, scales, stepper, model) or CheckpointError/ConfigError."""
    ckpt = load_checkpoint(path)
    cfg = config_from_checkpoint(ckpt, overrides)
    f = cfg.features
    for key, have in (("history_len", f.history_len), ("feature_type", f.feature_type)):
        if key in ckpt and ckpt[key] != have:
            raise CheckpointError(f"checkpoint {path}: {key}={ckpt[key]!r} but its config gives {have!r} "
                                  "(the model's inputs cannot be changed with --set)")
    if ckpt.get("norm_scales"):
        try:
            scales = NormScales(**{k: float(ckpt["norm_scales"][k]) for k in ("L0", "V0", "A0", "T0")})
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"checkpoint {path}: norm_scales must hold numbers L0, V0, A0, T0") from None
    else:  # older checkpoints: recompute exactly as the training driver does
        scales = auto_norm_scales(cfg)
    stepper = Stepper(cfg, scales)
    model = DtModel.from_config(cfg, feature_dim(f.feature_type, f.history_len)).to(stepper.model_dtype)
    try:
        model.load_state_dict(ckpt["model_state_dict"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        why = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s)") else lines[0]
        raise CheckpointError(f"checkpoint {path}: weights do not fit the model its config describes "
                              f"({why[:200]})") from None
    model.eval()
    return ckpt, cfg, scales, stepper, model


# ---------------------------------------------------------------- test systems
def _dyn_time(m, x) -> float:
    """2 pi sqrt(L^3 / M) with L the mean pair distance: the 'period' of an N-body system."""
    n = len(m)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    return kepler_period(float(d.sum() / (n * (n - 1))), float(np.sum(m)))


def build_systems(args, cfg) -> list[dict]:
    s = cfg.system
    n_ck, d_ck = s.num_particles, s.dim
    systems = []

    def add(name, kind, params, m, x, v, period):
        if x.shape != (n_ck, d_ck):
            raise InputError(f"{name}: N={x.shape[0]} D={x.shape[1]}, but the checkpoint was trained on "
                             f"N={n_ck} D={d_ck}")
        duration = args.duration or args.periods * period
        systems.append({"name": name, "kind": kind, "params": params, "m": m, "x": x, "v": v,
                        "period": period, "duration": duration})

    orbits = list(args.orbit or [])
    ics = list(args.ic or [])
    randoms = list(args.random or [])
    if not (orbits or ics or randoms):
        if s.ic == "kepler":
            orbits = list(DEFAULT_ORBITS)
        elif s.ic == "random":
            randoms = [n_ck] * 3
        else:
            ics = [s.ic_path]
    for e, a in orbits:
        if n_ck != 2:
            raise InputError(f"orbit {e:g},{a:g}: a Kepler orbit has N=2 bodies, but the checkpoint was trained "
                             f"on N={n_ck}")
        m, x, v, period = kepler_ic(e, a, s.mass, d_ck)
        add(f"kepler_e{e:g}_a{a:g}", "kepler", {"e": e, "a": a}, m, x, v, period)
    for path in ics:
        try:
            m, x, v = load_ic_file(path)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        add(f"file_{Path(path).stem}", "file", {"path": str(path)}, m, x, v, _dyn_time(m, x))
    base_seed = cfg.run.seed + 1 if args.seed is None else args.seed
    for i, n in enumerate(randoms):
        if n != n_ck:
            raise InputError(f"random system with N={n}: the checkpoint was trained on N={n_ck}")
        if isinstance(s.mass, list) and len(s.mass) not in (1, n):
            raise InputError(f"random system: system.mass lists {len(s.mass)} masses for N={n}")
        m, x, v = random_ic(n, d_ck, s.mass, s.pos_scale, s.vel_scale, np.random.default_rng(base_seed + i))
        add(f"random_N{n}_seed{base_seed + i}", "random", {"seed": base_seed + i}, m, x, v, _dyn_time(m, x))
    seen: dict[str, int] = {}
    for sysd in systems:  # unique, file-safe names
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", sysd["name"])
        seen[name] = seen.get(name, 0) + 1
        sysd["name"] = name if seen[name] == 1 else f"{name}_{seen[name]}"
    return systems


# ---------------------------------------------------------------- report
def _clean(obj):
    """JSON-safe: numpy scalars to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _ratio(a, b):
    return a / b if a is not None and b and math.isfinite(a) and math.isfinite(b) else None


def system_report(sysd, runs, ref) -> dict:
    methods = {k: dict(r.metrics) for k, r in runs.items()}
    if ref is not None:
        methods["reference"] = {"integrator": "REBOUND IAS15", "wall_time_s": ref["wall_time_s"]}
    lm, fm, am = (methods[k]["max_rel_dE"] for k in METHODS)
    return {"kind": sysd["kind"], "params": sysd["params"], "N": int(sysd["x"].shape[0]),
            "D": int(sysd["x"].shape[1]), "period": sysd["period"], "duration": sysd["duration"],
            "trajectories": f"{sysd['name']}_trajectories.npz", "plot": f"{sysd['name']}.png",
            "methods": methods,
            "ratios": {"learned_over_fixed_max_rel_dE": _ratio(lm, fm),
                       "learned_over_adaptive_max_rel_dE": _ratio(lm, am)}}


def format_table(report: dict) -> str:
    def num(v, fmt):
        width = int(re.match(r"\d*", fmt).group() or 0)
        return "-".rjust(width) if v is None else format(v, fmt)

    head = (f"{'system':<22} {'method':<9} {'steps':>7} {'end t':>9} {'max|dE/E|':>10} {'fin|dE/E|':>10} "
            f"{'max|dP|':>9} {'max|dL|/L':>9} {'pos err':>9} {'wall s':>7}  status")
    lines = [head, "-" * len(head)]
    for name, sysr in report["systems"].items():
        for method in METHODS:
            r = sysr["methods"][method]
            lines.append(f"{name:<22} {method:<9} {r['steps']:>7d} {num(r['end_time'], '9.4g')} "
                         f"{num(r.get('max_rel_dE'), '10.2e')} {num(r.get('final_rel_dE'), '10.2e')} "
                         f"{num(r.get('max_momentum_residual'), '9.1e')} "
                         f"{num(r.get('max_ang_mom_residual'), '9.1e')} "
                         f"{num(r.get('final_position_error'), '9.2e')} {r['wall_time_s']:7.2f}  {r['status']}")
        rat = sysr["ratios"]
        lines.append(f"{'':<22} learned/fixed max|dE/E| = {num(rat['learned_over_fixed_max_rel_dE'], '.3g')}, "
                     f"learned/adaptive = {num(rat['learned_over_adaptive_max_rel_dE'], '.3g')}")
    return "\n".join(lines)


def trajectories_npz(sysd, runs, ref) -> bytes:
    arrays = {"m": np.asarray(sysd["m"], dtype=np.float64)}
    for method, run in runs.items():
        arrays.update({f"{method}_{k}": v for k, v in run.trajectory.items()})
    if ref is not None and "t" in ref:
        arrays.update(reference_t=ref["t"], reference_x=ref["x"])
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


COLORS = {"learned": "tab:red", "fixed": "tab:blue", "adaptive": "tab:green"}


def plot_png(name, runs, ref) -> bytes:
    """Orbit paths, |dE/E| against time (log) and dt against time (log), all methods on shared axes."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 5), layout="constrained")
    ax_orbit, ax_err, ax_dt = fig.subplots(1, 3)
    if ref is not None and "x" in ref:
        for i in range(ref["x"].shape[1]):
            ax_orbit.plot(ref["x"][:, i, 0], ref["x"][:, i, 1], "k--", lw=0.8,
                          label="IAS15 reference" if i == 0 else None)
    for method, run in runs.items():
        tr, c = run.trajectory, COLORS[method]
        for i in range(tr["x"].shape[1]):
            ax_orbit.plot(tr["x"][:, i, 0], tr["x"][:, i, 1], color=c, lw=0.7, alpha=0.8,
                          label=method if i == 0 else None)
        e = tr["E"]
        rel = np.abs((e - e[0]) / (e[0] + 1e-12 * abs(e[0]) + 1e-12))
        ax_err.semilogy(tr["t"][1:], np.maximum(rel[1:], 1e-17), color=c, lw=0.8, label=method)
        ax_dt.semilogy(tr["t"][1:], tr["dt"][1:], color=c, lw=0.8, label=method)
    ax_orbit.set(title=f"{name}: orbits", xlabel="x", ylabel="y", aspect="equal")
    # Frame the true orbit (reference, else the learned run) so one diverging method cannot squash it.
    frame = ref["x"] if ref is not None and "x" in ref else runs["learned"].trajectory["x"]
    lo, hi = frame[..., :2].min((0, 1)), frame[..., :2].max((0, 1))
    pad = 0.25 * float(max(hi - lo)) + 1e-12
    ax_orbit.set(xlim=(lo[0] - pad, hi[0] + pad), ylim=(lo[1] - pad, hi[1] + pad))
    ax_err.set(title="|ΔE/E|", xlabel="t", ylabel="|ΔE/E|")
    ax_dt.set(title="dt", xlabel="t", ylabel="dt")
    for ax in (ax_orbit, ax_err, ax_dt):
        ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_out(ckpt_path: Path) -> Path:
    if ckpt_path.parent.name == "model":  # <output_dir>/<name>/model/model_epoch_XXXX.pt
        return ckpt_path.parent.parent / "simulate" / ckpt_path.stem
    return ckpt_path.parent / f"{ckpt_path.stem}_simulate"


# ---------------------------------------------------------------- main
def run(args) -> int:
    ckpt_path = Path(args.checkpoint)
    ckpt, cfg, scales, stepper, model = restore(ckpt_path, args.set)
    systems = build_systems(args, cfg)
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    report = {
        "checkpoint": str(ckpt_path), "epoch": ckpt.get("epoch"), "config_summary": cfg.summary(),
        "history_len": cfg.features.history_len, "feature_type": cfg.features.feature_type,
        "dtype": cfg.run.dtype, "model_dtype": cfg.model.dtype or cfg.run.dtype,
        "norm_scales": scales.to_dict(), "norm_scales_source": "checkpoint" if ckpt.get("norm_scales") else "recomputed",
        "softening": stepper.eps, "n_steps": stepper.n_steps,
        "notes": {"end_time": "the step that would cross the end time is clipped onto it",
                  "baselines": "fixed and adaptive take the learned run's step count over the full duration",
                  "rel_dE": "|(E(t) - E0) / E0| against the initial energy",
                  "momentum_residual": "|P(t) - P0| (absolute)",
                  "ang_mom_residual": "|L(t) - L0| / |L0| (absolute when L0 = 0)",
                  "final_position_error": "max over bodies of |x(T) - x_IAS15(T)|"},
        "systems": {},
    }
    files: dict[str, bytes] = {}
    results = {}
    for shape in dict.fromkeys(sysd["x"].shape for sysd in systems):  # one batch per (N, D)
        batch = [sysd for sysd in systems if sysd["x"].shape == shape]
        m, x, v, duration = (np.stack([sysd[k] for sysd in batch]) for k in ("m", "x", "v", "duration"))
        out = compare_many(model, stepper, m, x, v, duration, max_steps=args.max_steps,
                           reference=not args.no_reference, ref_samples=REF_SAMPLES)
        results.update((sysd["name"], r) for sysd, r in zip(batch, out))
    for sysd in systems:
        name = sysd["name"]
        runs, ref = results[name]
        report["systems"][name] = system_report(sysd, runs, ref)
        files[f"{name}_trajectories.npz"] = trajectories_npz(sysd, runs, ref)
        files[f"{name}.png"] = plot_png(name, runs, ref)
    report = _clean(report)
    files["report.json"] = (json.dumps(report, indent=2) + "\n").encode()
    out = Path(args.out) if args.out else default_out(ckpt_path)
    out.mkdir(parents=True, exist_ok=True)
    for fname, data in files.items():  # report.json last: its presence means the rest is there
        write_atomic(out / fname, data)
    print(format_table(report))
    print(f"wrote {out / 'report.json'} and {len(files) - 1} trajectory/plot files")
    return 0


def main(argv=None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        return run(args)
    except InputError as exc:
        print(f"simulate: error: {exc}", file=sys.stderr)
        return 2
    except (CheckpointError, ConfigError) as exc:
        print(f"simulate: error: {'; '.join(str(exc).splitlines())}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"simulate: error: {exc}", file=sys.stderr)
        return 1
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0


if __name__ == "__main__":
    sys.exit(main())

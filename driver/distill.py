"""Distil per-system oracles into one network of the learned family (issue 19, G4; aits/distill.py).

    # can one network hold every oracle of a board at once? (trains on the test systems: a diagnostic)
    python driver/distill.py --checkpoint CKPT --oracle ORACLE_DIR --board BOARD_DIR --out DIR
    # oracles of K systems drawn from the checkpoint's training mixture, distilled: judge DIR on a suite
    python driver/distill.py --checkpoint CKPT --mixture K [--periods 10] [--seed 0] --out DIR
    # the members driver/transfer.py fitted to whole families, on their fit and held-out draws' states
    python driver/distill.py --checkpoint CKPT --transfer T/transfer.json [--members binary triple] --out DIR

CKPT gives the family (model.init_factor, max_modulation, recursion_clip, features.timescale) and the
network's shape and initial weights (``run.seed``, or ``--seed``). ``--oracle``: the oracle.json of
driver/oracle.py, its systems rebuilt from BOARD_DIR/scoreboard.json. ``--mixture``: each system's oracle is
fitted here (in parallel as Ray tasks, ``--workers``; 1 runs in this process) over its first ``--periods``
restart units (inner periods). Writes DIR/model_best.pt (CKPT with the distilled weights and the box of the
distilled states as its range check; ``extra.distill`` says where they came from) and DIR/distill.json (per
system: the oracle's fit J over the classical rule's and the share of its field the network holds, R^2).
Judge it with ``python driver/evaluate.py --checkpoint DIR/model_best.pt --suite practitioner``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aits import distill as D
from aits.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from aits.config import Config
from aits.model import build_model
from driver.backends import map_tasks, single_threaded


_fit_task = single_threaded(D.fit_system)
_member_task = single_threaded(D.member_field)


def fit_all(systems: list, family: tuple, max_runs: int, workers: int, log=print) -> list[dict]:
    """:func:`aits.distill.fit_system` of every system, in order; Ray tasks when ``workers`` > 1 (each
    system's line is logged as its fit ends)."""
    return map_tasks(_fit_task, [(s, *family, max_runs) for s in systems], workers, lambda i, rec: log(_line(rec)))


def _line(rec: dict) -> str:
    if rec["status"] != "ok":
        return f"{rec['name']:24s} classical run {rec['status']}: left out"
    j = rec.get("J_ratio")
    return (f"{rec['name']:24s} N {rec['N']}  fit J / classical {'-' if j is None else f'{j:.3f}'}  "
            f"field std {np.std(rec['targets']):.3f}  {rec['seconds']:.0f} s")


def transfer_records(path: Path, cfg: Config, rule: tuple, members: list[str] | None, workers: int) -> list[dict]:
    """The fields of driver/transfer.py's family members (all but ``mixture`` unless ``members`` names them)
    on the states of the draws each was fitted to and held out on."""
    from driver.transfer import HELD_OUT_STREAM, draws

    res = _read_json(path)
    try:
        stored = (res["eta0"], res["modulation"], res["clip"], res["timescale"])
        by_name = {f["family"]: f for f in res["families"]}
    except (KeyError, TypeError):
        raise ValueError(f"{path}: not a transfer.json with fitted families") from None
    if stored != rule:
        raise ValueError(f"{path}: fitted for (eta0, M, clip, timescale) {stored}, the checkpoint's rule is {rule}")
    names = members or [f for f in by_name if f != "mixture"]
    missing = [f for f in names if f not in by_name]
    if missing or not names:
        raise ValueError(f"{path}: no member {', '.join(missing) or '(none left)'} (it has {', '.join(by_name)})")
    calls, meta = [], []
    for fam in names:
        for seed, count in ((res["seed"], res["fit"]), (res["seed"] + HELD_OUT_STREAM, res["held_out"])):
            for s in draws(cfg, fam, seed, count, res["periods"]):
                m = by_name[fam]
                calls.append((s, m["keep"], m["w"], m["mean"], m["std"], *rule))
                meta.append({"name": s.name, "family": fam, "N": int(len(s.m))})
    out = []
    for rec, field in zip(meta, map_tasks(_member_task, calls, workers)):
        if field is None:
            out.append({**rec, "status": "classical run not ok"})
        else:
            out.append({**rec, "status": "ok", "J_ratio": None, "features": field[0].tolist(),
                        "targets": field[1].tolist()})
    return out


def board_records(oracle_dir: Path, board_dir: Path, family: tuple) -> list[dict]:
    """The fields of an oracle.json's systems (driver/oracle.py), rebuilt from its board."""
    from driver.oracle import board_systems

    res = _read_json(oracle_dir / "oracle.json")
    board = _read_json(board_dir / "scoreboard.json")
    eta0, modulation, clip, timescale = family
    stored = (res.get("eta0"), res.get("modulation"), res.get("clip"), res.get("timescale", "nn"))
    if stored != family:
        raise ValueError(f"{oracle_dir / 'oracle.json'}: fitted for (eta0, M, clip, timescale) {stored}, the "
                         f"checkpoint's rule is {family}")
    systems = board_systems(board)
    out = []
    for name, s in res["systems"].items():
        if name not in systems:
            raise ValueError(f"{oracle_dir / 'oracle.json'}: system {name!r} is not on the board {board_dir}")
        fit = s["fit"]
        feats, targets = D.oracle_field(systems[name], fit["features"], fit["w"], fit["fit_duration"], eta0,
                                        modulation, clip, timescale)
        out.append({"name": name, "family": "practitioner", "N": int(len(systems[name].m)), "status": "ok",
                    "J_ratio": fit.get("J_fit_over_classical"), "features": feats.tolist(),
                    "targets": targets.tolist()})
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a bounded-factor training checkpoint (the family)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--oracle", metavar="ORACLE_DIR", help="a folder with driver/oracle.py's oracle.json")
    src.add_argument("--mixture", type=int, metavar="K", help="fit the oracles of K systems of the training mixture")
    src.add_argument("--transfer", metavar="JSON", help="driver/transfer.py's transfer.json: its family members")
    p.add_argument("--members", nargs="+", help="--transfer: the families whose members to distil (default: all "
                   "but mixture)")
    p.add_argument("--board", metavar="BOARD_DIR", help="with --oracle: the scoreboard the oracles were fitted on")
    p.add_argument("--periods", type=float, default=10.0, help="--mixture: each system's duration (restart units)")
    p.add_argument("--seed", type=int, default=None, help="draws and initial weights (default: the checkpoint's run.seed)")
    p.add_argument("--max-runs", type=int, default=60, help="--mixture: fit runs per system (Nelder-Mead evaluations)")
    p.add_argument("--iters", type=int, default=4000, help="full-batch Adam steps of the distillation")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel Ray tasks for the fits; 1: here")
    p.add_argument("--out", required=True, help="output folder")
    a = p.parse_args(argv)
    if a.members and not a.transfer:
        p.error("--members goes with --transfer")
    if a.oracle and not a.board:
        p.error("--oracle needs --board (the scoreboard its systems come from)")
    if a.mixture is not None and a.mixture < 1:
        p.error(f"--mixture: must be >= 1 systems, got {a.mixture}")
    if not (a.periods > 0 and math.isfinite(a.periods)) or a.max_runs < 1 or a.iters < 1 or a.workers < 1:
        p.error("--periods must be > 0; --max-runs, --iters and --workers >= 1")
    try:
        ckpt = load_checkpoint(a.checkpoint)
    except CheckpointError as exc:
        p.error(str(exc))
    data = dict(ckpt["config"])
    seed = a.seed if a.seed is not None else int(data.get("run", {}).get("seed", 0))
    # the run's name is the output folder's: the scoreboard labels the checkpoint by it, not by the base run
    data["run"] = {**data.get("run", {}), "seed": seed, "name": Path(a.out).resolve().name or "distill"}
    cfg = Config.from_dict(data)
    mc = cfg.model
    if mc.output != "factor" or mc.max_modulation is None or not mc.recursive:
        p.error(f"{a.checkpoint}: distillation needs a recursive bounded-factor rule (model.output factor, "
                f"max_modulation, recursive)")
    family = (float(mc.init_factor), float(mc.max_modulation), float(mc.step_clip), cfg.features.timescale)
    start = time.perf_counter()
    try:
        if a.oracle:
            records = board_records(Path(a.oracle), Path(a.board), family)
        elif a.transfer:
            records = transfer_records(Path(a.transfer), cfg, family, a.members, a.workers)
        else:
            systems = D.mixture_systems(cfg.system, seed, a.mixture, a.periods)
            records = fit_all(systems, family, a.max_runs, a.workers)
    except ValueError as exc:
        p.error(str(exc))
    used = [r for r in records if r["status"] == "ok"]
    if not used:
        p.error("no system's classical run ended ok: nothing to distil")
    fit_s = time.perf_counter() - start
    model = build_model(cfg)
    fields = [(np.asarray(r["features"], dtype=float), np.asarray(r["targets"], dtype=float)) for r in used]
    stats = D.distill(model, fields, a.iters)
    box = D.training_box(fields)
    for r, r2 in zip(used, stats["r2"]):
        r["r2"] = r2
    source = {"oracle": str(a.oracle), "board": str(a.board)} if a.oracle else \
        {"transfer": str(a.transfer), "members": a.members} if a.transfer else \
        {"mixture": a.mixture, "periods": a.periods, "seed": seed}
    info = {"checkpoint": str(a.checkpoint), **source, "iters": a.iters, "systems": len(used),
            "left_out": [r["name"] for r in records if r["status"] != "ok"], "loss": stats["loss"],
            "target_var": stats["target_var"], "fit_seconds": fit_s,
            "distill_seconds": time.perf_counter() - start - fit_s}
    out = Path(a.out)
    ckpt["config"] = cfg.to_dict()
    ckpt["model_state_dict"] = ckpt["model_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt["feature_ranges"] = box.to_dict()
    ckpt["extra"] = {**(ckpt.get("extra") or {}), "distill": info}
    save_checkpoint(out / "model_best.pt", ckpt)
    rows = [{k: v for k, v in r.items() if k not in ("features", "targets")} for r in records]
    (out / "distill.json").write_text(json.dumps({**info, "records": rows}, indent=1, default=float))
    r2 = [r for r in stats["r2"] if r is not None]
    print(f"distill: {len(used)} systems, {sum(len(f) for f, _ in fields)} states; oracles {fit_s:.0f} s; "
          f"fit mean square {stats['loss']:.2e} of variance {stats['target_var']:.2e}; per-system R^2 median "
          f"{np.median(r2) if r2 else float('nan'):.2f}, min {min(r2) if r2 else float('nan'):.2f} -> {out / 'model_best.pt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

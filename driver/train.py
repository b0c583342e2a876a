"""Train the dt model on Ray: collector actors run the collect phase, the learner the generalize phase.

    python driver/train.py --config configs/ray.yaml [--set section.key=value ...] [--resume auto|PATH]

``ray.address`` empty starts a local Ray (or joins the cluster of ``ray job submit``), ``auto``
or an address joins a cluster; ``ray.inprocess: true`` runs the same actors in this process.
Outputs go to ``<run.output_dir>/<run.name>/``: ``model/model_epoch_XXXX.pt``, ``metrics.jsonl``
and the W&B run.
"""
from __future__ import annotations

import argparse
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from aits import (CheckpointError, Config, ConfigError, NormScales, auto_norm_scales, config_from_checkpoint,
                  latest_checkpoint, load_checkpoint)
from aits.checkpoint import check_training_state, fit_weights
from aits.model import build_model
from driver.backends import make_backend
from driver.trainer import RunFailure, Trainer


# ---------------------------------------------------------------- entry point
class UsageError(Exception):
    """A bad command line; the message is the one line the user sees."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + error
        raise UsageError(message)


def parse_args(argv):
    p = _Parser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML config (required unless --resume names a checkpoint)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable)")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="'auto': continue this run's newest checkpoint (fresh start if none); or a checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a run folder that holds checkpoints, deleting them")
    p.add_argument("--movie", action="store_true",
                   help="at the end, render the final checkpoint on its training system beside the classical "
                        "step recursion: <run>/movie.mp4 (or .gif; docs/REPORT.md)")
    return p.parse_args(argv)


def setup(args) -> tuple[Config, dict | None]:
    """The validated config and the checkpoint to resume from (or None)."""
    if args.resume and args.resume != "auto" and not args.config:
        ckpt = resumable(load_checkpoint(args.resume), args.resume)
        cfg = config_from_checkpoint(ckpt, args.overrides)
        return cfg, fits(cfg, ckpt, args.resume)
    if not args.config:
        raise ConfigError(["--config: required (or --resume PATH to take the config from a checkpoint)"])
    cfg = Config.load(args.config, args.overrides)
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    if args.resume == "auto":
        last = latest_checkpoint(run_dir)
        if last is None:
            print(f"No checkpoint in {run_dir / 'model'}: starting afresh", flush=True)
            check_init_weights(cfg)
        return cfg, (fits(cfg, resumable(load_checkpoint(last), last), last) if last else None)
    if args.resume:
        return cfg, fits(cfg, resumable(load_checkpoint(args.resume), args.resume), args.resume)
    check_init_weights(cfg)
    if latest_checkpoint(run_dir) is not None:
        if not args.overwrite:
            raise ConfigError([f"run.name: {run_dir.resolve()} already holds checkpoints; continue it with "
                               "--resume auto, pick another --set run.name=..., or pass --overwrite"])
        shutil.rmtree(run_dir / "model")
    return cfg, None


def check_init_weights(cfg: Config) -> None:
    """A fresh run's ``model.init_weights``: a checkpoint whose weights fit this model (else CheckpointError),
    checked before anything is written or removed; made absolute, as the run's config records it."""
    if cfg.model.init_weights:
        cfg.model.init_weights = str(Path(cfg.model.init_weights).resolve())
        fit_weights(build_model(cfg), load_checkpoint(cfg.model.init_weights), cfg.model.init_weights)


def fits(cfg: Config, ckpt: dict, path) -> dict:
    """The checkpoint, when its states fit ``cfg`` and this version (else ConfigError/CheckpointError)."""
    n = len(ckpt["extra"]["collectors"])
    if n != cfg.ray.num_collectors:
        raise ConfigError([f"ray.num_collectors: checkpoint has {n} collectors, config {cfg.ray.num_collectors}"])
    check_training_state(ckpt, cfg, path)
    return ckpt


def resumable(ckpt: dict, path) -> dict:
    """The checkpoint, or CheckpointError when it lacks what a training resume needs."""
    extra = ckpt.get("extra") or {}
    missing = [k for k in ("norm_scales", "optimizer_state_dict") if ckpt.get(k) is None]
    missing += [f"extra.{k}" for k, kind in (("collectors", list), ("learner", dict))
                if not isinstance(extra.get(k), kind)]
    if missing:
        raise CheckpointError(f"checkpoint {path}: not a training checkpoint of driver/train.py "
                              f"(missing {', '.join(missing)})")
    return ckpt


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        cfg, ckpt = setup(args)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    code = train(cfg, ckpt)
    if args.movie and code == 0:
        from driver.movie import training_movie

        path, fmt, frames, seconds = training_movie(Path(cfg.run.output_dir) / cfg.run.name)
        print(f"Training movie ({fmt}, {frames} frames, {seconds:.1f} s): {path.resolve()}", flush=True)
    return code


def train(cfg: Config, ckpt: dict | None, on_epoch=None) -> int:
    """Run the epochs from ``ckpt`` (None: afresh); returns the exit code. ``on_epoch(epoch, row,
    backend, learner, collectors)``, if given, is called after each epoch (soak, fault tests)."""
    run_dir = (Path(cfg.run.output_dir) / cfg.run.name).resolve()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return fail(f"run.output_dir: cannot create {run_dir} ({exc.strerror or type(exc).__name__})", 2)
    print(f"Output: {run_dir}", flush=True)
    remove_stale_temporaries(run_dir)
    backend, problem = make_backend(cfg)
    if problem:
        return fail(problem, 2)
    scales = NormScales(**ckpt["norm_scales"]) if ckpt else auto_norm_scales(cfg)
    trainer = Trainer(cfg, scales, backend, run_dir, on_epoch)
    threads = torch.get_num_threads()  # in-process actors set their own thread counts
    old_handlers = install_handlers(trainer.stop)
    failure = None
    try:
        epoch, reason = trainer.run(ckpt)
    except RunFailure as exc:
        failure = str(exc)
    finally:
        trainer.close()  # ends the progress bar's line before any message
        restore_handlers(old_handlers)
        torch.set_num_threads(threads)
        backend.shutdown()
    if failure:
        return fail(failure, 3)
    had = [c for c in trainer.converged if c is not None]  # epochs that had samples to generalize on
    rate = 100.0 * float(np.mean(had)) if had else 0.0
    skipped = len(trainer.converged) - len(had)
    if reason != "complete":
        print(f"Stopped after epoch {epoch}: {reason}; continue with --resume auto", flush=True)
    print(f"Training complete: {epoch} epochs, convergence rate: {rate:.1f}%"
          + (f" (of {len(had)} epochs with samples; {skipped} skipped)" if skipped else "")
          + f", total time: {trainer.elapsed():.1f}s",
          flush=True)
    return 0 if not trainer.stop else 128 + signal.Signals[trainer.stop["signal"]].value


def fail(line: str, code: int) -> int:
    print(f"error: {line}", file=sys.stderr, flush=True)
    return code


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete partial checkpoint writes a killed run left (``.model_epoch_*.tmp``); never a checkpoint."""
    for tmp in (run_dir / "model").glob(".model_epoch_*.pt.*.tmp"):
        tmp.unlink(missing_ok=True)


def install_handlers(stop: dict) -> dict:
    """SIGINT/SIGTERM set ``stop["signal"]`` (finish the epoch, checkpoint, stop); a second one aborts."""
    def on_signal(signum, _frame):
        if stop:  # a second signal: stop now, without a checkpoint
            raise KeyboardInterrupt
        stop["signal"] = signal.Signals(signum).name
        tqdm.write(f"{stop['signal']}: finishing epoch, then checkpoint and stop (again to abort)")

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread: leave signals alone
            pass
    return old


def restore_handlers(old: dict) -> None:
    for sig, handler in old.items():
        signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())

"""Train the dt model on Ray: collectors gather samples (Part 1), the learner generalises (Part 2).

    python driver/train.py --config configs/ray.yaml [--set section.key=value ...] [--resume auto|PATH]

``ray.address`` empty starts a local Ray (or joins the cluster of ``ray job submit``), ``auto``
or an address joins a cluster; ``ray.inprocess: true`` runs the same actors in this process.
Outputs go to ``<run.output_dir>/<run.name>/``: ``model/model_epoch_XXXX.pt``, ``metrics.jsonl``
and the W&B run.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    import aits  # noqa: F401
except ImportError:  # run from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm

from actors import Collector, Learner
from aits import (CheckpointError, Config, ConfigError, NormScales, auto_norm_scales, build_payload,
                  checkpoint_path, config_from_checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint)


# ---------------------------------------------------------------- backends
class InProcess:
    """The actors as plain objects in the driver, with the call shape of the Ray backend."""

    def actor(self, cls, *args, num_cpus=1.0, num_gpus=0.0):
        return cls(*args)

    def call(self, actor, method: str, *args, num_returns: int = 1):
        return getattr(actor, method)(*args)

    def put(self, obj):
        return obj

    def get(self, obj):
        return obj

    def kill(self, actor):
        pass


class RayBackend:
    """Actors as Ray actors; calls return object refs."""

    def __init__(self):
        import ray

        self.ray = ray

    def actor(self, cls, *args, num_cpus=1.0, num_gpus=0.0):
        return self.ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(cls).remote(*args)

    def call(self, actor, method: str, *args, num_returns: int = 1):
        return getattr(actor, method).options(num_returns=num_returns).remote(*args)

    def put(self, obj):
        return self.ray.put(obj)

    def get(self, obj):
        return self.ray.get(obj)

    def kill(self, actor):
        self.ray.kill(actor)


def check_resources(cfg: Config, local: bool) -> str | None:
    """A problem line when the cluster cannot place every actor at once (they would wait for ever)."""
    import ray

    r = cfg.ray
    need = {"CPU": r.num_collectors * r.collector_cpus + r.learner_cpus, "GPU": r.learner_gpus}
    have = ray.cluster_resources()
    short = [f"{need[k]:g} {k} asked, {have.get(k, 0):g} present" for k in need if need[k] > have.get(k, 0)]
    if not short:
        return None
    line = (f"ray: the actors need more than the cluster has ({'; '.join(short)}); lower ray.num_collectors, "
            "ray.collector_cpus, ray.learner_cpus or ray.learner_gpus")
    if local:  # a Ray this driver started on this machine will not grow
        return line
    print(f"warning: {line}; waiting for the cluster to grow", file=sys.stderr)
    return None


def start_ray(cfg: Config) -> bool:
    """Start a local Ray or join a cluster. Returns True when this call connected (so we disconnect)."""
    import ray

    if ray.is_initialized():  # a caller (tests, notebooks) already holds a Ray
        return False
    # Under `ray job submit` RAY_ADDRESS names the cluster: join it even when ray.address is empty.
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
    return True


# ---------------------------------------------------------------- metrics
SUMMED = ("accepted", "samples", "warmup_discarded", "retrain_limit_hits", "nonfinite", "orbit_restarts")


def merge_part1(rows: list[dict]) -> dict:
    """Collectors' Part 1 metrics -> one row: counts summed, maxima maxed, the rest averaged."""
    out = {}
    for key in rows[0]:
        vals = [r[key] for r in rows]
        name = key.split("/", 1)[1]
        if name in SUMMED:
            out[key] = int(sum(vals))
        elif name.startswith("max") or key == "system/collect_time":
            out[key] = max(vals)
        else:
            out[key] = float(np.mean(vals))
    return out


class Tracker:
    """metrics.jsonl plus the optional W&B run."""

    def __init__(self, cfg: Config, run_dir: Path, scales: NormScales, keep_until: int, wandb_id: str | None):
        self.path = run_dir / "metrics.jsonl"
        rows = []
        if keep_until and self.path.exists():  # resume: drop rows of epochs after the checkpoint
            rows = [r for r in map(json.loads, self.path.read_text().splitlines()) if r["epoch"] <= keep_until]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        self.run = None
        w = cfg.wandb
        if w.mode != "disabled":
            import wandb

            resume = dict(id=wandb_id, resume="allow") if (wandb_id and w.mode == "online") else {}
            self.run = wandb.init(project=w.project, entity=w.entity, name=w.name or cfg.run.name, tags=w.tags,
                                  mode=w.mode, dir=str(run_dir), config={**cfg.to_dict(), "norm_scales":
                                                                         scales.to_dict()},
                                  settings=wandb.Settings(quiet=True, console="off", disable_git=True),
                                  **resume)

    @property
    def wandb_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def log(self, row: dict) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.run is not None:
            self.run.log(row, step=row["epoch"])

    def close(self) -> None:
        if self.run is not None:
            import wandb

            self.run.finish()
            wandb.teardown()  # wait for the W&B service to write the run out before returning


# ---------------------------------------------------------------- entry point
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML config (required unless --resume names a checkpoint)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable)")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="'auto': continue this run's newest checkpoint (fresh start if none); or a checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a run folder that holds checkpoints, deleting them")
    return p.parse_args(argv)


def setup(args) -> tuple[Config, dict | None]:
    """The validated config and the checkpoint to resume from (or None)."""
    if args.resume and args.resume != "auto" and not args.config:
        ckpt = load_checkpoint(args.resume)
        return config_from_checkpoint(ckpt, args.overrides), ckpt
    if not args.config:
        raise ConfigError(["--config: required (or --resume PATH to take the config from a checkpoint)"])
    cfg = Config.load(args.config, args.overrides)
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    if args.resume == "auto":
        last = latest_checkpoint(run_dir)
        return cfg, (load_checkpoint(last) if last else None)
    if args.resume:
        return cfg, load_checkpoint(args.resume)
    if latest_checkpoint(run_dir) is not None:
        if not args.overwrite:
            raise ConfigError([f"run.name: {run_dir.resolve()} already holds checkpoints; continue it with "
                               "--resume auto, pick another --set run.name=..., or pass --overwrite"])
        shutil.rmtree(run_dir / "model")
    return cfg, None


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg, ckpt = setup(args)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return train(cfg, ckpt)


def train(cfg: Config, ckpt: dict | None) -> int:
    start = time.perf_counter()
    run_dir = (Path(cfg.run.output_dir) / cfg.run.name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"Output: {run_dir}", flush=True)
    scales = NormScales(**ckpt["norm_scales"]) if ckpt else auto_norm_scales(cfg)
    extra = ckpt["extra"] if ckpt else {}
    first = ckpt["epoch"] + 1 if ckpt else 1
    if ckpt and len(extra["collectors"]) != cfg.ray.num_collectors:
        print(f"error: ray.num_collectors: checkpoint has {len(extra['collectors'])} collectors, config "
              f"{cfg.ray.num_collectors}", file=sys.stderr)
        return 2
    converged = list(extra.get("converged", []))
    elapsed_before = extra.get("elapsed", 0.0)

    owns_ray = False if cfg.ray.inprocess else start_ray(cfg)
    local = owns_ray and not (cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    problem = None if cfg.ray.inprocess else check_resources(cfg, local)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        if owns_ray:
            import ray

            ray.shutdown()
        return 2
    backend = InProcess() if cfg.ray.inprocess else RayBackend()
    threads = torch.get_num_threads()  # in-process actors set their own thread counts
    conf, sc, r = cfg.to_dict(), scales.to_dict(), cfg.ray
    learner = backend.actor(Learner, conf, sc, num_cpus=r.learner_cpus, num_gpus=r.learner_gpus)
    collectors = [backend.actor(Collector, conf, sc, i, num_cpus=r.collector_cpus)
                  for i in range(r.num_collectors)]
    tracker = None
    stop = {}  # signal name once SIGINT/SIGTERM arrived

    def on_signal(signum, _frame):
        if stop:  # a second signal: stop now, without a checkpoint
            raise KeyboardInterrupt
        stop["signal"] = signal.Signals(signum).name
        tqdm.write(f"{stop['signal']}: finishing epoch, then checkpoint and stop (again to abort)")

    old_handlers = install_handlers(on_signal)
    try:
        if ckpt:
            backend.get([backend.call(learner, "restore", {"model": ckpt["model_state_dict"],
                                                           "optimizer": ckpt["optimizer_state_dict"],
                                                           **extra["learner"]})]
                        + [backend.call(c, "restore", s) for c, s in zip(collectors, extra["collectors"])])
            print(f"Resumed from epoch {ckpt['epoch']}", flush=True)
        tracker = Tracker(cfg, run_dir, scales, first - 1, extra.get("wandb_id"))
        weights = backend.get(backend.call(learner, "weights"))
        bar = tqdm(total=cfg.train.epochs, initial=first - 1, desc="epochs", unit="epoch", dynamic_ncols=True)
        epoch, row, reason = first - 1, {}, "complete"
        for epoch in range(first, cfg.train.epochs + 1):
            t0 = time.perf_counter()
            weights_ref = backend.put(weights)  # one copy in the object store for every collector
            t_put = time.perf_counter() - t0
            results = [backend.call(c, "collect", weights_ref, num_returns=2) for c in collectors]
            part2_ref = backend.call(learner, "generalize", *[samples for samples, _ in results])
            part1 = merge_part1(backend.get([metrics for _, metrics in results]))  # collector order
            part2 = backend.get(part2_ref)
            weights = backend.get(backend.call(learner, "weights"))
            dt_epoch = time.perf_counter() - t0
            converged.append(part2["part2/converged"])
            row = {"epoch": epoch, **part1, **part2, "system/epoch_time": dt_epoch,
                   "system/broadcast_time": t_put, "system/samples_per_s": part1["part1/accepted"] / dt_epoch}
            tracker.log(row)
            bar.set_postfix({"acc/s": f"{row['system/samples_per_s']:.0f}",
                             "retrains": f"{part1['part1/mean_retrains']:.2f}",
                             "pass": f"{part2['part2/pass_rate_first']:.2f}"}, refresh=False)
            bar.update(1)
            over_time = cfg.run.duration is not None and time.perf_counter() - start >= cfg.run.duration
            if stop or over_time or epoch % cfg.run.checkpoint_interval == 0 or epoch == cfg.train.epochs:
                save(backend, cfg, scales, run_dir, epoch, learner, collectors, row, converged,
                     elapsed_before + time.perf_counter() - start, tracker.wandb_id)
            if stop or over_time:
                reason = stop["signal"] if stop else "run.duration reached"
                break
        bar.close()
    finally:
        restore_handlers(old_handlers)
        torch.set_num_threads(threads)
        if tracker is not None:
            tracker.close()
        for a in [*collectors, learner]:
            backend.kill(a)
        if owns_ray:
            backend.ray.shutdown()
    total = elapsed_before + time.perf_counter() - start
    rate = 100.0 * float(np.mean(converged)) if converged else 0.0
    if reason != "complete":
        print(f"Stopped after epoch {epoch}: {reason}; continue with --resume auto", flush=True)
    print(f"Training complete: {epoch} epochs, convergence rate: {rate:.1f}%, total time: {total:.1f}s",
          flush=True)
    return 0 if not stop else 128 + signal.Signals[stop["signal"]].value


def save(backend, cfg, scales, run_dir, epoch, learner, collectors, row, converged, elapsed, wandb_id) -> Path:
    """Checkpoint with the seed's keys; ``extra`` holds what an exact resume needs."""
    states = backend.get([backend.call(learner, "state")] + [backend.call(c, "state") for c in collectors])
    learner_state, collector_states = states[0], states[1:]
    extra = {"collectors": collector_states, "converged": converged, "elapsed": elapsed, "wandb_id": wandb_id,
             "learner": {k: learner_state[k] for k in ("rng", "torch_rng", "replay")}}
    payload = build_payload(epoch, learner_state["model"], learner_state["optimizer"], cfg, scales.to_dict(),
                            loss=row.get("part2/loss"), info=row, logs={"converged": converged}, extra=extra)
    return save_checkpoint(checkpoint_path(run_dir, epoch), payload)


def install_handlers(handler) -> dict:
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    return old


def restore_handlers(old: dict) -> None:
    for sig, handler in old.items():
        signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())

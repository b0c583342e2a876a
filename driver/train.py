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
from tqdm import tqdm

from actors import Collector, Learner
from aits import (CheckpointError, Config, ConfigError, NormScales, auto_norm_scales, build_payload,
                  checkpoint_path, config_from_checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint)
from aits.metrics import merge


# ---------------------------------------------------------------- backends
class InProcess:
    """The actors as plain objects in the driver, with the call shape of the Ray backend."""

    actor_died = ()  # objects in this process do not die on their own

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
        # ActorDiedError and ActorUnavailableError: with no Ray-side restarts both mean "gone".
        self.actor_died = (ray.exceptions.RayActorError,)

    def actor(self, cls, *args, num_cpus=1.0, num_gpus=0.0):
        return self.ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(cls).remote(*args)

    def call(self, actor, method: str, *args, num_returns: int = 1):
        return getattr(actor, method).options(num_returns=num_returns).remote(*args)

    def put(self, obj):
        return self.ray.put(obj)

    def get(self, obj):
        return self.ray.get(obj)

    def kill(self, actor):
        try:
            self.ray.kill(actor)
        except Exception:  # noqa: BLE001 - already gone or never started: nothing to kill
            pass


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
class Tracker:
    """metrics.jsonl plus the optional W&B run."""

    def __init__(self, cfg: Config, run_dir: Path, scales: NormScales, keep_until: int, wandb_id: str | None):
        self.path = run_dir / "metrics.jsonl"
        rows = read_rows(self.path) if keep_until else []  # resume: drop rows after the checkpoint
        text = "".join(json.dumps(r) + "\n" for r in rows if r["epoch"] <= keep_until)
        tmp = self.path.with_name(self.path.name + ".tmp")  # a kill here must not lose the kept rows
        tmp.write_text(text)
        os.replace(tmp, self.path)
        self.run = None
        w = cfg.wandb
        if w.mode != "disabled":
            import wandb

            mode = w.mode
            if mode == "online" and not wandb_credentials():
                print("warning: wandb.mode=online: no W&B API key (WANDB_API_KEY or netrc); logging offline "
                      "instead, upload later with `wandb sync`", file=sys.stderr, flush=True)
                mode = "offline"
            kwargs = dict(project=w.project, entity=w.entity, name=w.name or cfg.run.name, tags=w.tags,
                          dir=str(run_dir), config={**cfg.to_dict(), "norm_scales": scales.to_dict()},
                          settings=wandb.Settings(quiet=True, console="off", disable_git=True))
            resume = dict(id=wandb_id, resume="allow") if (wandb_id and mode == "online") else {}
            try:
                self.run = wandb.init(mode=mode, **kwargs, **resume)
            except Exception as exc:  # noqa: BLE001 - e.g. online with no network: keep the run going
                if mode != "online":
                    raise
                print(f"warning: wandb.mode=online: W&B unreachable ({type(exc).__name__}); logging offline "
                      "instead, upload later with `wandb sync`", file=sys.stderr, flush=True)
                self.run = wandb.init(mode="offline", **kwargs)

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


def read_rows(path: Path) -> list[dict]:
    """metrics.jsonl rows; a last line cut short by a killed driver is dropped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def wandb_credentials() -> bool:
    """Whether an online W&B run could authenticate: WANDB_API_KEY or a netrc entry for the W&B host."""
    import netrc
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


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
    return p.parse_args(argv)


def setup(args) -> tuple[Config, dict | None]:
    """The validated config and the checkpoint to resume from (or None)."""
    if args.resume and args.resume != "auto" and not args.config:
        ckpt = resumable(load_checkpoint(args.resume), args.resume)
        return config_from_checkpoint(ckpt, args.overrides), ckpt
    if not args.config:
        raise ConfigError(["--config: required (or --resume PATH to take the config from a checkpoint)"])
    cfg = Config.load(args.config, args.overrides)
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    if args.resume == "auto":
        last = latest_checkpoint(run_dir)
        if last is None:
            print(f"No checkpoint in {run_dir / 'model'}: starting afresh", flush=True)
        return cfg, (resumable(load_checkpoint(last), last) if last else None)
    if args.resume:
        return cfg, resumable(load_checkpoint(args.resume), args.resume)
    if latest_checkpoint(run_dir) is not None:
        if not args.overwrite:
            raise ConfigError([f"run.name: {run_dir.resolve()} already holds checkpoints; continue it with "
                               "--resume auto, pick another --set run.name=..., or pass --overwrite"])
        shutil.rmtree(run_dir / "model")
    return cfg, None


def resumable(ckpt: dict, path) -> dict:
    """The checkpoint, or CheckpointError when it lacks what a training resume needs."""
    extra = ckpt.get("extra") or {}
    missing = [k for k in ("norm_scales", "optimizer_state_dict") if ckpt.get(k) is None]
    missing += [f"extra.{k}" for k in ("collectors", "learner") if k not in extra]
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
    return train(cfg, ckpt)


MAX_COLLECTOR_RESTARTS = 3  # per collector and epoch; more means something other than bad luck


class RunFailure(RuntimeError):
    """A fault the run cannot continue past; the message is the one line the user sees."""


def train(cfg: Config, ckpt: dict | None, on_epoch=None) -> int:
    """Run the epochs. ``on_epoch(epoch, row, backend, learner, collectors)``, if given, is called
    after each epoch is logged (soak reports and fault tests use it)."""
    start = time.perf_counter()
    run_dir = (Path(cfg.run.output_dir) / cfg.run.name).resolve()
    scales = NormScales(**ckpt["norm_scales"]) if ckpt else auto_norm_scales(cfg)
    extra = ckpt["extra"] if ckpt else {}
    first = ckpt["epoch"] + 1 if ckpt else 1
    if ckpt and len(extra["collectors"]) != cfg.ray.num_collectors:
        print(f"error: ray.num_collectors: checkpoint has {len(extra['collectors'])} collectors, config "
              f"{cfg.ray.num_collectors}", file=sys.stderr)
        return 2
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: run.output_dir: cannot create {run_dir} ({exc.strerror or type(exc).__name__})",
              file=sys.stderr)
        return 2
    print(f"Output: {run_dir}", flush=True)
    remove_stale_temporaries(run_dir)
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

    def new_collector(i: int, state: dict | None):
        c = backend.actor(Collector, conf, sc, i, num_cpus=r.collector_cpus)
        if state is not None:
            backend.get(backend.call(c, "restore", state))
        return c

    learner = backend.actor(Learner, conf, sc, num_cpus=r.learner_cpus, num_gpus=r.learner_gpus)
    # The driver keeps each collector's state as of its last finished Part 1: a replacement
    # collector restarts from it and repeats the epoch's Part 1 exactly.
    states = list(extra["collectors"]) if ckpt else [None] * r.num_collectors
    collectors = [new_collector(i, s) for i, s in enumerate(states)]
    tracker = None
    failure = None
    stop = {}  # signal name once SIGINT/SIGTERM arrived

    def on_signal(signum, _frame):
        if stop:  # a second signal: stop now, without a checkpoint
            raise KeyboardInterrupt
        stop["signal"] = signal.Signals(signum).name
        tqdm.write(f"{stop['signal']}: finishing epoch, then checkpoint and stop (again to abort)")

    old_handlers = install_handlers(on_signal)
    epoch, reason, bar = first - 1, "complete", None
    try:
        if ckpt:
            learner_call(backend, epoch, backend.call(learner, "restore", {
                "model": ckpt["model_state_dict"], "optimizer": ckpt["optimizer_state_dict"], **extra["learner"]}))
            print(f"Resumed from epoch {ckpt['epoch']}", flush=True)
        tracker = Tracker(cfg, run_dir, scales, first - 1, extra.get("wandb_id"))
        weights = learner_call(backend, epoch, backend.call(learner, "weights"))
        bar = tqdm(total=cfg.train.epochs, initial=first - 1, desc="epochs", unit="epoch", dynamic_ncols=True)
        # ray.pipeline: Part 1 of epoch e+1 runs with the weights of epoch e-1 while the learner runs
        # Part 2 of epoch e. ``pending`` is that already-gathered Part 1; ``resume_weights`` the
        # weights a resumed pipelined run's first Part 1 must use to repeat it exactly.
        pending, resume_weights = None, extra.get("pending_weights") if cfg.ray.pipeline else None
        for epoch in range(first, cfg.train.epochs + 1):
            t0 = time.perf_counter()
            weights_ref = backend.put(weights)  # one copy in the object store for every collector
            t_put = time.perf_counter() - t0
            if pending is None:
                first_ref = weights_ref if resume_weights is None else backend.put(resume_weights)
                pending = run_collectors(backend, collectors, states, first_ref, new_collector, epoch)
                resume_weights = None
            sample_refs, part1_rows, restarts = pending
            part1 = merge(part1_rows)  # collector order; each metric combines by its declared rule
            part2_ref = backend.call(learner, "generalize", *sample_refs)
            epoch_states, pending, pending_weights = list(states), None, None
            if cfg.ray.pipeline and epoch < cfg.train.epochs:
                pending_weights = weights
                pending = run_collectors(backend, collectors, states, weights_ref, new_collector, epoch + 1)
            part2 = learner_call(backend, epoch, part2_ref)
            weights = learner_call(backend, epoch, backend.call(learner, "weights"))
            dt_epoch = time.perf_counter() - t0
            converged.append(part2["generalize/converged"])
            row = {"epoch": epoch, **part1, **part2, "system/epoch_time": dt_epoch,
                   "system/broadcast_time": t_put, "system/samples_per_s": part1["collect/accepted"] / dt_epoch,
                   "system/collector_restarts": restarts}
            tracker.log(row)
            check_finite(weights, epoch, run_dir)
            bar.set_postfix({"acc/s": f"{row['system/samples_per_s']:.0f}",
                             "retrains": f"{part1['collect/mean_retrains']:.2f}",
                             "pass": f"{part2['generalize/pass_rate_first']:.2f}"}, refresh=False)
            bar.update(1)
            over_time = cfg.run.duration is not None and time.perf_counter() - start >= cfg.run.duration
            if stop or over_time or epoch % cfg.run.checkpoint_interval == 0 or epoch == cfg.train.epochs:
                save(backend, cfg, scales, run_dir, epoch, learner, epoch_states, row, converged,
                     elapsed_before + time.perf_counter() - start, tracker.wandb_id, pending_weights)
            if on_epoch is not None:
                on_epoch(epoch, row, backend, learner, collectors)
            if stop or over_time:
                reason = stop["signal"] if stop else "run.duration reached"
                break
    except RunFailure as exc:
        failure = str(exc)
    finally:
        if bar is not None:
            bar.close()  # ends the bar's line before any message
        restore_handlers(old_handlers)
        torch.set_num_threads(threads)
        if tracker is not None:
            tracker.close()
        for a in [*collectors, learner]:
            backend.kill(a)
        if owns_ray:
            backend.ray.shutdown()
    if failure:
        print(f"error: {failure}", file=sys.stderr, flush=True)
        return 3
    total = elapsed_before + time.perf_counter() - start
    rate = 100.0 * float(np.mean(converged)) if converged else 0.0
    if reason != "complete":
        print(f"Stopped after epoch {epoch}: {reason}; continue with --resume auto", flush=True)
    print(f"Training complete: {epoch} epochs, convergence rate: {rate:.1f}%, total time: {total:.1f}s",
          flush=True)
    return 0 if not stop else 128 + signal.Signals[stop["signal"]].value


def run_collectors(backend, collectors: list, states: list, weights_ref, new_collector, epoch: int):
    """Part 1 on every collector. A collector whose process died is replaced from ``states`` and its
    Part 1 repeated (at most MAX_COLLECTOR_RESTARTS times). Updates ``collectors`` and ``states`` in
    place; returns (sample refs, metrics rows, restarts), both in collector order."""
    calls = [submit_collect(backend, c, weights_ref) for c in collectors]
    rows, restarts = [], 0
    for i in range(len(collectors)):
        for tries in range(MAX_COLLECTOR_RESTARTS + 1):
            try:
                metrics, states[i] = backend.get([calls[i][1], calls[i][2]])
                break
            except backend.actor_died as exc:
                if tries == MAX_COLLECTOR_RESTARTS:
                    raise RunFailure(f"collector {i} died {tries + 1} times in epoch {epoch} "
                                     f"({type(exc).__name__}); stopped, continue with --resume auto") from None
                backend.kill(collectors[i])
                collectors[i] = new_collector(i, states[i])
                calls[i] = submit_collect(backend, collectors[i], weights_ref)
                restarts += 1
                tqdm.write(f"collector {i} died in epoch {epoch}: replaced from its last state, Part 1 repeated")
        rows.append(metrics)
    # Only refs of collectors that finished go to the learner: a dead one's refs would fail it too.
    return [samples for samples, _, _ in calls], rows, restarts


def submit_collect(backend, collector, weights_ref) -> tuple:
    """(samples ref, metrics ref, state ref): the state call queues behind collect on the same actor."""
    samples, metrics = backend.call(collector, "collect", weights_ref, num_returns=2)
    return samples, metrics, backend.call(collector, "state")


def learner_call(backend, epoch: int, ref):
    """The result of a learner call; a dead learner stops the run (its state is not recoverable)."""
    try:
        return backend.get(ref)
    except backend.actor_died as exc:
        raise RunFailure(f"learner died during epoch {epoch} ({type(exc).__name__}); stopped, the newest "
                         "checkpoint is intact: continue with --resume auto") from None


def check_finite(weights: dict, epoch: int, run_dir: Path) -> None:
    """Stop before non-finite weights reach a checkpoint or the collectors."""
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        last = latest_checkpoint(run_dir)
        raise RunFailure(f"model weights became non-finite in epoch {epoch} ({', '.join(bad)}); stopped "
                         f"without checkpointing them; last good checkpoint: {last.name if last else 'none'}")


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete partial checkpoint writes a killed run left (``.model_epoch_*.tmp``); never a checkpoint."""
    for tmp in (run_dir / "model").glob(".model_epoch_*.pt.*.tmp"):
        tmp.unlink(missing_ok=True)


def save(backend, cfg, scales, run_dir, epoch, learner, collector_states, row, converged, elapsed,
         wandb_id, pending_weights=None) -> Path:
    """Checkpoint with the seed's keys; ``extra`` holds what an exact resume needs (with pipelining,
    the collectors' states before the next epoch's Part 1 and the weights it runs with)."""
    learner_state = learner_call(backend, epoch, backend.call(learner, "state"))
    check_finite(learner_state["model"], epoch, run_dir)
    extra = {"collectors": list(collector_states), "converged": converged, "elapsed": elapsed,
             "wandb_id": wandb_id, "learner": {k: learner_state[k] for k in ("rng", "torch_rng", "replay")},
             "pending_weights": pending_weights}
    payload = build_payload(epoch, learner_state["model"], learner_state["optimizer"], cfg, scales.to_dict(),
                            loss=row.get("generalize/loss"), info=row, logs={"converged": converged}, extra=extra)
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

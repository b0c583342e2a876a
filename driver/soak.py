"""Soak: many short Ray epochs with a tiny model; driver and actor memory (RSS) after warm-up and at the end.

    python driver/soak.py [--epochs 300] [--warmup 20] [--output-dir runs_soak] [--wandb offline]
    python driver/soak.py --cluster --epochs 300 --remove-node-at 100 --kill-learner-at 200

``--cluster`` runs on a three-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a
head without CPUs for the driver and learner, two worker nodes with 2 CPUs each for the collectors);
``--remove-node-at E`` removes the node of collector 1 during epoch E + 1, ``--kill-learner-at E``
SIGKILLs the learner during epoch E + 1 (it is rebuilt from the newest checkpoint).

Prints one line per process: RSS in MB ``warmup`` epochs after the process first served the run
(for the first processes: at the end of epoch ``warmup``) and at the end, and the growth; processes
that were replaced are listed with their last figure. Writes ``<output-dir>/soak/soak.json``.
Memory that keeps growing here would end a long run.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import psutil

from aits import Config, build_model
from driver.train import train

MB = 2 ** 20


def soak_config(epochs: int, output_dir: str, wandb_mode: str) -> Config:
    """Tiny Kepler run: [8, 8] model, 10 steps per epoch and collector, checkpoints every 10 epochs."""
    return Config.from_dict({
        "run": {"name": "soak", "output_dir": output_dir, "seed": 1, "checkpoint_interval": 10},
        "features": {"history_len": 2, "normalize_inputs": "auto"},
        "model": {"hidden_dims": [8, 8], "init_dt": 0.01},
        "train": {"epochs": epochs, "steps_per_epoch": 10, "generalize_steps": 10, "generalize_batch_size": 16,
                  "lr": 1e-3, "max_retrain_steps": 100},
        "ray": {"num_collectors": 2, "collector_cpus": 1, "learner_cpus": 0},
        "wandb": {"mode": wandb_mode},
    })


# Where `ray start` and ray.cluster_utils record the newest cluster; ray.init() without an address
# on this machine joins it. A soak or test cluster must not capture other programs' drivers.
CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")


def start_cluster(workers: int = 2, cpus: int = 2):
    """A Ray cluster of separate raylets on this machine, connected: head (no CPUs) + ``workers`` nodes."""
    import ray
    from ray.cluster_utils import Cluster

    before = CURRENT_CLUSTER.read_text() if CURRENT_CLUSTER.exists() else None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        for _ in range(workers):
            add_worker(cluster, cpus, wait=False)
        ray.init(address=cluster.address, logging_level=logging.WARNING)
        cluster.wait_for_nodes()
    finally:
        unrecord(before)
    return cluster


def stop_cluster(cluster) -> None:
    """Disconnect and remove every node (keeping another cluster's address record, which
    ``Cluster.shutdown`` would delete)."""
    import ray

    before = CURRENT_CLUSTER.read_text() if CURRENT_CLUSTER.exists() else None
    ray.shutdown()
    cluster.shutdown()
    unrecord(before)


def add_worker(cluster, cpus: int = 2, wait: bool = True) -> None:
    """One more worker node (``cpus`` CPUs) in ``cluster``."""
    before = CURRENT_CLUSTER.read_text() if CURRENT_CLUSTER.exists() else None
    cluster.add_node(num_cpus=cpus)
    unrecord(before)
    if wait:
        cluster.wait_for_nodes()


def unrecord(before: str | None) -> None:
    """Put back the cluster address file as it was (ray.cluster_utils overwrites it with ours)."""
    if before is None:
        CURRENT_CLUSTER.unlink(missing_ok=True)
    else:
        CURRENT_CLUSTER.write_text(before)


def node_of(actor) -> str:
    """Node id (hex) of a Ray actor."""
    import ray

    return ray._private.state.actors(actor._actor_id.hex())["Address"]["NodeID"]


def remove_node_of(cluster, actor, delay: float = 0.05) -> threading.Timer:
    """Remove the worker node that hosts ``actor``, ``delay`` s from now."""
    node_id = node_of(actor)
    node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
    timer = threading.Timer(delay, cluster.remove_node, (node,))
    timer.start()
    return timer


def kill_later(backend, actor, delay: float = 0.05) -> threading.Timer:
    """SIGKILL the actor's worker process ``delay`` s from now (so: during the next epoch)."""
    pid = backend.get(backend.call(actor, "pid"))
    timer = threading.Timer(delay, os.kill, (pid, signal.SIGKILL))
    timer.start()
    return timer


def soak(epochs: int, warmup: int, output_dir: str, wandb_mode: str = "disabled", cluster=None,
         remove_node_at: int | None = None, kill_learner_at: int | None = None) -> dict:
    """Run the soak (on the connected Ray, or ``cluster`` for node removal). Returns the run facts and
    ``processes``: {role: {"pid", "start_mb", "end_mb", "growth_mb", ...}} for the processes serving at
    the end, and ``replaced``: the processes that were lost on the way."""
    cfg = soak_config(epochs, output_dir, wandb_mode)
    seen: dict[int, dict] = {}  # pid -> {"role", "first", "start_mb", "last_mb", "last"}
    calls = {"n": 0}
    timers, done = [], set()
    nodes = len(cluster.list_all_nodes()) if cluster is not None else 1

    def on_epoch(epoch, row, backend, learner, collectors):
        calls["n"] += 1
        n = calls["n"]  # epochs repeated after a learner rebuild count again
        gc.collect()
        roles = {"driver": os.getpid()}
        for role, actor in [("learner", learner), *((f"collector {i}", c) for i, c in enumerate(collectors))]:
            try:
                roles[role] = backend.get(backend.call(actor, "pid"))
            except backend.actor_died:  # lost after its epoch's work: replaced in the next epoch
                pass
        for role, pid in roles.items():
            rec = seen.setdefault(pid, {"role": role, "pid": pid, "first": n})
            rss = psutil.Process(pid).memory_info().rss / MB
            if n == rec["first"] + warmup - 1:
                rec.update(start_mb=rss, start_call=n)
            rec.update(last_mb=rss, last_call=n, epoch=epoch)
        if epoch == remove_node_at and cluster is not None and "node" not in done:
            done.add("node")
            timers.append(remove_node_of(cluster, collectors[1]))
        if epoch == kill_learner_at and "learner" not in done:
            done.add("learner")
            timers.append(kill_later(backend, learner))

    code = train(cfg, None, on_epoch=on_epoch)
    for t in timers:
        t.join()
    if code != 0:
        raise RuntimeError(f"soak run failed with exit code {code}")
    rows = [json.loads(line) for line in (Path(output_dir) / "soak" / "metrics.jsonl").read_text().splitlines()]
    final = {rec["role"]: rec for rec in seen.values() if rec["last_call"] == calls["n"]}
    processes = {}
    for role, rec in final.items():
        processes[role] = {"pid": rec["pid"], "start_mb": rec.get("start_mb", rec["last_mb"]), "end_mb": rec["last_mb"],
                           "start_after": rec.get("start_call", rec["last_call"]), "end_after": rec["last_call"]}
        processes[role]["growth_mb"] = processes[role]["end_mb"] - processes[role]["start_mb"]
    replaced = [{"role": r["role"], "pid": r["pid"], "last_mb": r["last_mb"], "last_epoch": r["epoch"]}
                for r in seen.values() if r["last_call"] != calls["n"]]
    params = sum(p.numel() for p in build_model(cfg).parameters())
    return {"epochs": epochs, "warmup": warmup, "epochs_run": calls["n"], "model_params": params,
            "nodes": nodes,
            "collector_restarts": sum(r["system/collector_restarts"] for r in rows),
            "learner_restarts": sum(r.get("system/learner_restarts", 0) for r in rows),
            "processes": processes, "replaced": replaced}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20, help="epochs a process serves before its memory baseline")
    p.add_argument("--output-dir", default="runs_soak")
    p.add_argument("--wandb", default="disabled", choices=("disabled", "offline"))
    p.add_argument("--cluster", action="store_true", help="three-node Ray cluster on this machine")
    p.add_argument("--remove-node-at", type=int, metavar="EPOCH", help="remove collector 1's node (needs --cluster)")
    p.add_argument("--kill-learner-at", type=int, metavar="EPOCH", help="SIGKILL the learner")
    args = p.parse_args(argv)
    if not 1 <= args.warmup < args.epochs:
        print("error: --warmup must lie in [1, --epochs)", file=sys.stderr)
        return 2
    if args.remove_node_at is not None and not args.cluster:
        print("error: --remove-node-at needs --cluster", file=sys.stderr)
        return 2
    for name in ("remove_node_at", "kill_learner_at"):
        at = getattr(args, name)
        if at is not None and not 1 <= at <= args.epochs - args.warmup - 1:
            print(f"error: --{name.replace('_', '-')} must lie in [1, --epochs - --warmup - 1] (the replacement "
                  "needs --warmup epochs before its baseline)", file=sys.stderr)
            return 2
    cluster = start_cluster() if args.cluster else None
    try:
        report = soak(args.epochs, args.warmup, args.output_dir, args.wandb, cluster, args.remove_node_at,
                      args.kill_learner_at)
    finally:
        if cluster is not None:
            stop_cluster(cluster)
    print(f"soak: {report['epochs']} epochs ({report['epochs_run']} run, with repeats), {report['nodes']} node(s), "
          f"model {report['model_params']} parameters, collector restarts {report['collector_restarts']}, "
          f"learner restarts {report['learner_restarts']}; RSS in MB ({args.warmup} epochs into each process "
          "-> end)")
    for name, m in report["processes"].items():
        print(f"  {name:12s} pid {m['pid']:>7d}  {m['start_mb']:8.1f} -> {m['end_mb']:8.1f}  ({m['growth_mb']:+.1f})"
              f"  [epochs {m['start_after']} -> {m['end_after']}]")
    for m in report["replaced"]:
        print(f"  {m['role']:12s} pid {m['pid']:>7d}  lost after epoch {m['last_epoch']} at {m['last_mb']:.1f}")
    out = Path(args.output_dir) / "soak" / "soak.json"
    out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

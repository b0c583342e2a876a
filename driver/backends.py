"""Where the actors live: in the driver process (``ray.inprocess``) or as Ray actors.

Both backends have the same call shape (``actor``, ``call``, ``put``, ``get``, ``kill``), so the
trainer does not know which one it drives.
"""
from __future__ import annotations

import logging
import os
import sys

from aits import Config


class InProcess:
    """The actors as plain objects in the driver, with the call shape of the Ray backend."""

    actor_died = work_lost = ()  # objects in this process do not die on their own

    def actor(self, cls, *args, num_cpus=1.0, num_gpus=0.0, spread=False):
        return cls(*args)

    def call(self, actor, method: str, *args, num_returns: int = 1):
        return getattr(actor, method)(*args)

    def put(self, obj):
        return obj

    def get(self, obj):
        return obj

    def kill(self, actor):
        pass

    def shutdown(self):
        pass


class RayBackend:
    """Actors as Ray actors; calls return object refs.

    Collectors are placed with Ray's ``SPREAD`` scheduling strategy, so on a cluster they are
    spread over the nodes instead of packed onto the first one that has room.
    """

    def __init__(self, owns_ray: bool):
        import ray

        self.ray = ray
        self.owns_ray = owns_ray
        # ActorDiedError and ActorUnavailableError: with no Ray-side restarts both mean "gone".
        self.actor_died = (ray.exceptions.RayActorError,)
        # A call's work is also lost when an object it made or was given is lost with its node
        # (objects over 100 KB live in the object store of the node that made them).
        self.work_lost = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)

    def actor(self, cls, *args, num_cpus=1.0, num_gpus=0.0, spread=False):
        options = dict(num_cpus=num_cpus, num_gpus=num_gpus)
        if spread:
            options["scheduling_strategy"] = "SPREAD"
        return self.ray.remote(**options)(cls).remote(*args)

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

    def shutdown(self):
        if self.owns_ray:
            self.ray.shutdown()


def make_backend(cfg: Config):
    """The backend for ``cfg``: InProcess, or a RayBackend on a started or joined Ray.

    Returns (backend, problem): problem is a one-line error when the actors cannot be placed (the
    Ray this call started is shut down again)."""
    if cfg.ray.inprocess:
        return InProcess(), None
    owns_ray = start_ray(cfg)
    local = owns_ray and not (cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    backend = RayBackend(owns_ray)
    problem = check_resources(cfg, local)
    if problem:
        backend.shutdown()
    return backend, problem


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
    else:  # "local": a new Ray even when another one (`ray start`, a test cluster) runs on this machine
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    return True


def single_threaded(fn):
    """``fn`` as a task that first sets torch to one thread (a Ray task holds one CPU; 2 cores are shared)."""
    def task(*args):
        import torch

        torch.set_num_threads(1)
        return fn(*args)
    return task


def map_tasks(fn, calls: list[tuple], workers: int, on_done=None, order=None) -> list:
    """``fn(*args)`` for every ``args`` of ``calls``; results in call order. ``workers`` == 1: one after another
    in this process; more: Ray tasks of one CPU each, on the Ray a caller already holds or on a Ray of our own
    (``address="local"``: never a cluster that happens to run on this machine), shut down afterwards.
    ``on_done(i, result)`` runs as each call finishes; ``order``: the submission order (default: as given)."""
    results: list = [None] * len(calls)
    order = list(range(len(calls))) if order is None else list(order)
    if workers == 1:
        for i in order:
            results[i] = fn(*calls[i])
            if on_done is not None:
                on_done(i, results[i])
        return results
    import ray

    owns = not ray.is_initialized()
    if owns:
        ray.init(address="local", num_cpus=workers, include_dashboard=False, logging_level="WARNING")
    try:
        task = ray.remote(num_cpus=1)(fn)
        refs = {task.remote(*calls[i]): i for i in order}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            i = refs[done[0]]
            results[i] = ray.get(done[0])
            if on_done is not None:
                on_done(i, results[i])
    finally:
        if owns:
            ray.shutdown()
    return results

"""The epoch loop of driver/train.py: a ``Trainer`` owns the actors of one run and its steps.

One epoch (``Trainer.train_epoch_two_phase``; ``Trainer.run`` is the seed's ``run_two_phase_training``):
broadcast the weights, the collect phase (the seed's Part 1) on every collector (``collect``), one
learner call that runs the generalize phase (Part 2) and returns metrics, weights and, on
checkpoint epochs, its state, log the row, checkpoint. Faults the run can repair are repaired here:
a dead collector is replaced from the state kept after its last finished collect; a dead learner is
rebuilt from the newest checkpoint, the collectors rewound to it and the epochs since repeated
(``rebuild_learner``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from actors import Collector, Learner
from aits import (Config, NormScales, build_payload, checkpoint_path, latest_checkpoint, load_checkpoint,
                  save_checkpoint)
from aits.metrics import merge

from .tracking import Tracker

MAX_COLLECTOR_RESTARTS = 3  # per collector and epoch; more means something other than bad luck
MAX_LEARNER_RESTARTS = 3  # learner rebuilds without a new checkpoint in between
# A policy whose median dt is below this fraction of the classical timescale min_i sqrt(r_i,nn/|a_i|)
# has collapsed (classical rules use 0.01-0.05): warn each such epoch, stop after COLLAPSE_EPOCHS in a row.
COLLAPSE_FLOOR = 1e-3
COLLAPSE_EPOCHS = 5


class RunFailure(RuntimeError):
    """A fault the run cannot continue past; the message is the one line the user sees."""


class LearnerLost(Exception):
    """The learner died (or lost its inputs) during ``epoch``."""

    def __init__(self, epoch: int, exc: BaseException):
        super().__init__(f"epoch {epoch}: {type(exc).__name__}")
        self.epoch, self.kind = epoch, type(exc).__name__


@dataclass
class Collected:
    """One epoch's collect phase: sample refs and metrics rows in collector order, collectors replaced."""

    samples: list
    rows: list[dict]
    restarts: int


class Trainer:
    """The actors of one run, the epoch loop and its named steps.

    ``on_epoch(epoch, row, backend, learner, collectors)``, if given, is called after each epoch
    (soak reports and fault tests use it). ``stop`` is set (to the signal's name) by the caller's
    signal handler: the epoch is finished, checkpointed, and the run ends.
    """

    def __init__(self, cfg: Config, scales: NormScales, backend, run_dir: Path, on_epoch=None):
        self.cfg, self.scales, self.backend, self.run_dir, self.on_epoch = cfg, scales, backend, run_dir, on_epoch
        self.collapsed = 0  # epochs in a row below COLLAPSE_FLOOR
        self.conf, self.sc = cfg.to_dict(), scales.to_dict()
        self.start = time.perf_counter()
        self.stop: dict = {}
        self.learner, self.collectors, self.states = None, [], []
        self.tracker: Tracker | None = None
        self.bar = None
        self.learner_restarts = 0  # rebuilds since the newest checkpoint (bounded)
        self.unlogged_restarts = 0  # rebuilds not yet counted in a metrics row
        # The epoch state; ``run`` and ``rewind`` set it from the checkpoint (or the start).
        self.newest: dict | Path | None = None  # the checkpoint a rebuilt learner starts from
        self.elapsed_before = 0.0  # seconds trained before this process (over all resumes)
        self.weights: dict = {}  # the learner's newest weights, broadcast at the next epoch
        self.converged: list = []  # per epoch: 1.0 / 0.0, None when skipped (too few samples)
        self.resume_weights: dict | None = None  # a resumed pipelined run's first collect weights
        self.pending: Collected | None = None  # with ray.pipeline: the next epoch's collect, under way
        self.pending_weights: dict | None = None  # the weights that collect runs with

    # ------------------------------------------------------------ the loop
    def run(self, ckpt: dict | None) -> tuple[int, str]:
        """Train from ``ckpt`` (None: from the start), epoch by epoch (the seed's
        ``run_two_phase_training``). Returns (last epoch, why it ended)."""
        extra = ckpt["extra"] if ckpt else {}
        self.newest = ckpt  # a dict until we save one
        self.elapsed_before = extra.get("elapsed", 0.0)
        try:
            epoch = self.rewind(ckpt)
        except LearnerLost as lost:
            raise RunFailure(f"learner died while starting ({lost.kind}); stopped, continue with --resume auto") from None
        if ckpt:
            print(f"Resumed from epoch {epoch}", flush=True)
        self.tracker = Tracker(self.cfg, self.run_dir, self.scales, epoch, extra.get("wandb_id"))
        self.bar = tqdm(total=self.cfg.train.epochs, initial=epoch, desc="epochs", unit="epoch", dynamic_ncols=True)
        while epoch < self.cfg.train.epochs:
            try:
                reason = self.train_epoch_two_phase(epoch + 1)
            except LearnerLost as lost:
                epoch = self.rebuild_learner(lost)
                continue
            epoch += 1
            if reason:
                return epoch, reason
        return epoch, "complete"

    def train_epoch_two_phase(self, epoch: int) -> str | None:
        """One epoch: collect (Part 1) on every collector, generalize (Part 2) in one learner call, log,
        checkpoint. Returns why the run must stop after it, or None."""
        t0 = time.perf_counter()
        weights_ref = self.backend.put(self.weights)  # one copy in the object store for every collector
        t_put = time.perf_counter() - t0
        collected = self.pending or self.collect(epoch, self.first_weights_ref(weights_ref))
        epoch_states = list(self.states)
        learner_ref = self.backend.call(self.learner, "step", self.checkpoint_due(epoch), *collected.samples)
        # ray.pipeline: collect of epoch e+1 runs with the weights of epoch e-1 while the learner generalizes e.
        self.pending = self.pending_weights = None
        if self.cfg.ray.pipeline and epoch < self.cfg.train.epochs:
            self.pending, self.pending_weights = self.collect(epoch + 1, weights_ref), self.weights
        result = self.learner_get(epoch, learner_ref)
        self.weights = result["weights"]
        row = self.log(epoch, collected, result["metrics"], time.perf_counter() - t0, t_put)
        check_finite(self.weights, epoch, self.run_dir)
        reason = self.stop.get("signal") or self.over_time()
        if reason or self.checkpoint_due(epoch):
            self.save(epoch, result.get("state") or self.learner_get(epoch, self.backend.call(self.learner, "state")),
                      epoch_states, row)
        if self.on_epoch is not None:
            self.on_epoch(epoch, row, self.backend, self.learner, self.collectors)
        return reason

    # ------------------------------------------------------------ steps
    def collect(self, epoch: int, weights_ref) -> Collected:
        """Collect on every collector. A collector whose process died is replaced from ``states`` and its
        collect repeated (at most MAX_COLLECTOR_RESTARTS times). Updates ``collectors`` and ``states``."""
        # per collector (samples ref, metrics ref, state ref): the state call queues behind collect on the same actor
        calls = [(*self.backend.call(c, "collect", weights_ref, num_returns=2), self.backend.call(c, "state"))
                 for c in self.collectors]
        rows, restarts = [], 0
        for i in range(len(self.collectors)):
            for tries in range(MAX_COLLECTOR_RESTARTS + 1):
                try:
                    metrics, self.states[i] = self.backend.get([calls[i][1], calls[i][2]])
                    break
                except self.backend.work_lost as exc:  # its process or node died
                    if tries == MAX_COLLECTOR_RESTARTS:
                        raise RunFailure(f"collector {i} died {tries + 1} times in epoch {epoch} "
                                         f"({type(exc).__name__}); stopped, continue with --resume auto") from None
                    self.replace_collector(i, self.states[i])
                    c = self.collectors[i]
                    calls[i] = (*self.backend.call(c, "collect", weights_ref, num_returns=2), self.backend.call(c, "state"))
                    restarts += 1
                    tqdm.write(f"collector {i} died in epoch {epoch}: replaced from its last state, its collect repeated")
            rows.append(metrics)
        # Only refs of collectors that finished go to the learner: a dead one's refs would fail it too.
        return Collected([samples for samples, _, _ in calls], rows, restarts)

    def learner_get(self, epoch: int, ref):
        """A learner call's result; LearnerLost when the learner (or the samples it was given) is gone."""
        try:
            return self.backend.get(ref)
        except self.backend.work_lost as exc:
            raise LearnerLost(epoch, exc) from None

    def log(self, epoch: int, collected: Collected, generalized: dict, dt_epoch: float, t_put: float) -> dict:
        """The epoch's metrics row to metrics.jsonl, W&B and the progress bar."""
        collect = merge(collected.rows)  # collector order; each metric combines by its declared rule
        # An epoch with too few samples to generalize on is not a converged one: recorded as None.
        self.converged.append(None if generalized.get("part2/skipped") else generalized["part2/converged"])
        row = {"epoch": epoch, **collect, **generalized, "system/epoch_time": dt_epoch, "system/broadcast_time": t_put,
               "system/samples_per_s": collect["part1/accepted"] / dt_epoch,
               "system/collector_restarts": collected.restarts, "system/learner_restarts": self.unlogged_restarts}
        self.unlogged_restarts = 0
        self.tracker.log(row)
        self.bar.set_postfix({"acc/s": f"{row['system/samples_per_s']:.0f}",
                              "retrains": f"{collect['part1/mean_retrains']:.2f}",
                              "pass": f"{generalized['part2/pass_rate_first']:.2f}"}, refresh=False)
        self.bar.update(1)
        self.check_collapse(epoch, collect)
        return row

    def check_collapse(self, epoch: int, collect: dict) -> None:
        """Warn when the learned dt falls below COLLAPSE_FLOOR classical timescales (or no step is
        accepted at all); stop after COLLAPSE_EPOCHS such epochs in a row: a silent collapse trains
        nothing useful."""
        ratio = collect.get("part1/dt_over_classical", 1.0)
        if ratio >= COLLAPSE_FLOOR:
            self.collapsed = 0
            return
        self.collapsed += 1
        what = (f"median learned dt is {ratio:.2e} of" if collect.get("part1/accepted") else
                f"no step was accepted ({collect.get('part1/stalled', 0)} slots stalled in the retrain loop, "
                f"{collect.get('part1/collapsed', 0)} gave up below 1e-6 of)")
        tqdm.write(f"warning: epoch {epoch}: {what} the classical timescale min sqrt(r/|a|) "
                   f"(floor {COLLAPSE_FLOOR:g}): no usable policy is being trained")
        if self.collapsed >= COLLAPSE_EPOCHS:
            raise RunFailure(f"training collapsed: for {self.collapsed} epochs up to {epoch} the median accepted dt "
                             f"was below {COLLAPSE_FLOOR:g} of the classical timescale min sqrt(r/|a|), or no step "
                             f"was accepted (last {ratio:.2e}); typical causes: close encounters without system.softening, an untrained dt far above the "
                             "systems' timescale (set model.init_dt or use model.output: factor), or an energy band "
                             "the integrator cannot reach; checkpoints so far are kept")

    def save(self, epoch: int, learner_state: dict, collector_states: list, row: dict) -> None:
        """Checkpoint with the seed's keys; ``extra`` holds what an exact resume needs (with pipelining,
        the collectors' states before the next epoch's collect and the weights it runs with)."""
        check_finite(learner_state["model"], epoch, self.run_dir)
        extra = {"collectors": list(collector_states), "converged": list(self.converged),
                 "elapsed": self.elapsed(), "wandb_id": self.tracker.wandb_id,
                 "learner": {k: learner_state[k] for k in ("rng", "torch_rng", "kept")},
                 "pending_weights": self.pending_weights}
        payload = build_payload(epoch, learner_state["model"], learner_state["optimizer"], self.cfg, self.sc,
                                loss=row.get("part2/loss"), info=row, logs={"converged": self.converged},
                                extra=extra)
        self.newest = save_checkpoint(checkpoint_path(self.run_dir, epoch), payload)
        self.learner_restarts = 0

    # ------------------------------------------------------------ actors, rewind and rebuild
    def rewind(self, ckpt: dict | None) -> int:
        """Start a new learner and put it and the collectors in the state of ``ckpt`` (None: the
        start). Returns the checkpoint's epoch (0)."""
        if self.learner is not None:
            self.backend.kill(self.learner)
        r = self.cfg.ray
        self.learner = self.backend.actor(Learner, self.conf, self.sc, num_cpus=r.learner_cpus, num_gpus=r.learner_gpus)
        extra = ckpt["extra"] if ckpt else {}
        epoch = ckpt["epoch"] if ckpt else 0
        if ckpt:
            self.learner_get(epoch, self.backend.call(self.learner, "restore", {
                "model": ckpt["model_state_dict"], "optimizer": ckpt["optimizer_state_dict"], **extra["learner"]}))
            self.weights = ckpt["model_state_dict"]
        else:
            if self.cfg.model.init_weights:  # a fresh run's first weights (train.py checked that they fit)
                init = load_checkpoint(self.cfg.model.init_weights)["model_state_dict"]
                self.learner_get(epoch, self.backend.call(self.learner, "load_weights", init))
            self.weights = self.learner_get(epoch, self.backend.call(self.learner, "weights"))
        self.states = list(extra["collectors"]) if ckpt else [None] * r.num_collectors
        for i, state in enumerate(self.states):
            self.restore_collector(i, state)
        self.converged = list(extra.get("converged", []))
        # A resumed pipelined run's first collect repeats with the weights stored for it.
        self.resume_weights = extra.get("pending_weights") if r.pipeline else None
        self.pending = self.pending_weights = None
        return epoch

    def rebuild_learner(self, lost: LearnerLost) -> int:
        """After the learner died: rebuild it from the newest checkpoint, rewind the collectors to
        it; returns that checkpoint's epoch (the epochs after it are repeated exactly)."""
        while True:
            self.learner_restarts += 1
            if self.learner_restarts > MAX_LEARNER_RESTARTS:
                raise RunFailure(f"learner died during epoch {lost.epoch} ({lost.kind}); stopped, the newest "
                                 "checkpoint is intact: continue with --resume auto")
            ckpt = load_checkpoint(self.newest) if isinstance(self.newest, Path) else self.newest
            since = ckpt["epoch"] if ckpt else 0
            tqdm.write(f"learner died during epoch {lost.epoch} ({lost.kind}): rebuilt from "
                       f"{'checkpoint ' + str(since) if ckpt else 'the start'}, repeating epochs {since + 1}-{lost.epoch}")
            try:
                epoch = self.rewind(ckpt)
                break
            except LearnerLost as again:
                lost = again
        self.unlogged_restarts += 1
        self.tracker.rewind(epoch)
        self.bar.n = epoch
        self.bar.refresh()
        return epoch

    def new_collector(self, i: int, state: dict | None):
        c = self.backend.actor(Collector, self.conf, self.sc, i, num_cpus=self.cfg.ray.collector_cpus, spread=True)
        if state is not None:
            self.backend.get(self.backend.call(c, "restore", state))
        return c

    def replace_collector(self, i: int, state: dict | None) -> None:
        """A new collector ``i`` restored from ``state`` (None: a fresh one), the old one killed."""
        self.backend.kill(self.collectors[i])
        self.collectors[i] = self.new_collector(i, state)

    def restore_collector(self, i: int, state: dict | None) -> None:
        """Collector ``i`` in ``state`` (None: fresh): restored in place when it is alive, else replaced."""
        if i == len(self.collectors):  # start-up
            self.collectors.append(self.new_collector(i, state))
            return
        if state is not None:
            try:
                self.backend.get(self.backend.call(self.collectors[i], "restore", state))
                return
            except self.backend.actor_died:
                pass
        self.replace_collector(i, state)

    # ------------------------------------------------------------ small helpers
    def first_weights_ref(self, weights_ref):
        """The weights of this run's first collect: a resumed pipelined run's stored ones, once."""
        ref = weights_ref if self.resume_weights is None else self.backend.put(self.resume_weights)
        self.resume_weights = None
        return ref

    def checkpoint_due(self, epoch: int) -> bool:
        return (bool(self.stop) or bool(self.over_time()) or epoch % self.cfg.run.checkpoint_interval == 0
                or epoch == self.cfg.train.epochs)

    def over_time(self) -> str | None:
        d = self.cfg.run.duration
        return "run.duration reached" if d is not None and time.perf_counter() - self.start >= d else None

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    def close(self) -> None:
        """Progress bar, tracker and actors; safe to call after a failure at any point."""
        if self.bar is not None:
            self.bar.close()  # ends the bar's line before any message
        if self.tracker is not None:
            self.tracker.close()
        for a in [*self.collectors, self.learner]:
            if a is not None:
                self.backend.kill(a)


def check_finite(weights: dict, epoch: int, run_dir: Path) -> None:
    """Stop before non-finite weights reach a checkpoint or the collectors."""
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        last = latest_checkpoint(run_dir)
        raise RunFailure(f"model weights became non-finite in epoch {epoch} ({', '.join(bad)}); stopped "
                         f"without checkpointing them; last good checkpoint: {last.name if last else 'none'}")

"""The seed's two-phase algorithm (SPEC §4), free of Ray: attempt, accept, band loss,
retrain loop, Part 1 collection on one orbit, Part 2 batched generalisation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from .config import Config
from .features import HistoryBuffer, NormScales, build_features
from .physics import (acceleration, energy, kepler_ic, leapfrog, load_ic_file, random_ic,
                      rel_energy_error, resolve_dtype)


# ---------------------------------------------------------------- samples
@dataclass
class Samples:
    """Accepted pre-step states with their own histories, as compact numpy arrays.

    m (n,N); x, v (n,N,D); dt (n,) the step that led to the state;
    hist_x, hist_v (n,K,N,D), hist_dt (n,K) oldest first; metadata per sample.
    """

    m: np.ndarray
    x: np.ndarray
    v: np.ndarray
    dt: np.ndarray
    hist_x: np.ndarray
    hist_v: np.ndarray
    hist_dt: np.ndarray
    orbit_id: np.ndarray
    step: np.ndarray
    accepted_dt: np.ndarray
    rel_dE: np.ndarray
    retrains: np.ndarray

    def __len__(self) -> int:
        return len(self.dt)

    @classmethod
    def from_records(cls, records: list[dict], K: int, N: int, D: int) -> "Samples":
        if not records:
            return cls.empty(K, N, D)
        return cls(**{f.name: np.stack([np.asarray(r[f.name]) for r in records]) for f in fields(cls)})

    @classmethod
    def empty(cls, K: int, N: int, D: int) -> "Samples":
        shapes = {"m": (0, N), "x": (0, N, D), "v": (0, N, D), "hist_x": (0, K, N, D),
                  "hist_v": (0, K, N, D), "hist_dt": (0, K)}
        ints = {"orbit_id", "step", "retrains"}
        return cls(**{f.name: np.zeros(shapes.get(f.name, (0,)), dtype=np.int64 if f.name in ints else np.float64)
                      for f in fields(cls)})

    @classmethod
    def concat(cls, parts: list["Samples"]) -> "Samples":
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def take(self, idx) -> "Samples":
        return Samples(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ---------------------------------------------------------------- stepping
@dataclass
class Prepared:
    """Everything of a batch of states that does not depend on the model."""

    x: torch.Tensor
    v: torch.Tensor
    m: torch.Tensor
    feats: torch.Tensor
    e0: torch.Tensor
    acc0: torch.Tensor

    def take(self, idx) -> "Prepared":
        return Prepared(*(getattr(self, f.name)[idx] for f in fields(self)))


@dataclass
class Attempt:
    dt: torch.Tensor  # (B,) with grad
    x: torch.Tensor
    v: torch.Tensor
    e1: torch.Tensor
    rel_dE: torch.Tensor  # (B,) with grad

    def passed(self, threshold: float) -> torch.Tensor:
        r = self.rel_dE.detach()
        return torch.isfinite(r) & (r < threshold)


class Stepper:
    """Builds features and takes model-chosen leapfrog steps for batches of states."""

    def __init__(self, cfg: Config, scales: NormScales, device="cpu"):
        self.eps = float(cfg.system.softening)
        self.n_steps = cfg.system.n_steps
        self.feature_type = cfg.features.feature_type
        self.K = cfg.features.history_len
        self.scales = scales
        self.device = torch.device(device)
        self.dtype = resolve_dtype(cfg.run.dtype)
        self.model_dtype = resolve_dtype(cfg.model.dtype or cfg.run.dtype)
        self.threshold = cfg.train.energy_threshold

    def tensor(self, a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=self.dtype, device=self.device)

    def prepare(self, m, x, v, dt, hist_x, hist_v, hist_dt) -> Prepared:
        """Arrays with a leading batch dim -> Prepared (features, E0, a(x0)), no grad."""
        m, x, v, dt = self.tensor(m), self.tensor(x), self.tensor(v), self.tensor(dt)
        with torch.no_grad():
            feats = build_features(x, v, m, dt, self.tensor(hist_x), self.tensor(hist_v), self.tensor(hist_dt),
                                   self.eps, self.scales, self.feature_type).to(self.model_dtype)
            e0 = energy(x, v, m, self.eps)
            acc0 = acceleration(x, m, self.eps)
        return Prepared(x, v, m, feats, e0, acc0)

    def prepare_samples(self, s: Samples) -> Prepared:
        return self.prepare(s.m, s.x, s.v, s.dt, s.hist_x, s.hist_v, s.hist_dt)

    def attempt(self, model, prep: Prepared) -> Attempt:
        """Predict dt from features, integrate; the graph runs dt -> leapfrog -> E1 only."""
        dt = model(prep.feats).to(self.dtype)
        x1, v1, _ = leapfrog(prep.x, prep.v, prep.m, dt, self.eps, self.n_steps, acc0=prep.acc0)
        e1 = energy(x1, v1, prep.m, self.eps)
        return Attempt(dt, x1, v1, e1, rel_energy_error(prep.e0, e1))


def band_loss(rel_dE: torch.Tensor, E_lower: float, E_upper: float, lower_only: bool = False) -> torch.Tensor:
    """Per-sample loss pushing log rel_dE into [log E_lower, log E_upper]; non-finite -> 1.0."""
    finite = torch.isfinite(rel_dE)
    y = torch.log(torch.where(finite, rel_dE, torch.ones_like(rel_dE)) + 1e-12)
    loss = torch.relu(math.log(E_lower) - y) ** 2
    if not lower_only:
        loss = loss + torch.relu(y - math.log(E_upper)) ** 2
    return torch.where(finite, loss, torch.ones_like(loss))


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    # foreach applies one fused kernel per parameter group instead of a Python loop per tensor.
    return torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                            foreach=True)


def optimizer_step(model, optimizer, loss: torch.Tensor) -> bool:
    """Backward and step unless the loss or a gradient is non-finite. Returns whether it stepped."""
    if not loss.requires_grad or not torch.isfinite(loss):
        return False
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    # One fused multi-tensor norm: cheaper than a per-tensor abs().max() pass.
    if not grads or not torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum()):
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    return True


# ---------------------------------------------------------------- orbits
class Orbit:
    """One system integrated by a collector: its state, history, clock and RNG."""

    def __init__(self, cfg: Config, orbit_id: int, rng: np.random.Generator):
        s = cfg.system
        self.cfg, self.orbit_id, self.rng = cfg, orbit_id, rng
        self.history = HistoryBuffer(cfg.features.history_len, s.num_particles, s.dim)
        self.restarts = -1
        self.restart()

    def restart(self) -> None:
        """Fresh initial conditions and a fresh history."""
        s = self.cfg.system
        self.period = math.inf
        if s.ic == "kepler":
            e = self.rng.uniform(s.e_min, s.e_max)
            a = self.rng.uniform(s.a_min, s.a_max)
            self.m, self.x, self.v, self.period = kepler_ic(e, a, s.mass, s.dim)
            self.params = {"e": e, "a": a}
        elif s.ic == "random":
            self.m, self.x, self.v = random_ic(s.num_particles, s.dim, s.mass, s.pos_scale, s.vel_scale, self.rng)
            self.params = {}
        else:
            self.m, self.x, self.v = load_ic_file(s.ic_path)
            self.params = {}
        self.t, self.dt, self.steps = 0.0, 0.0, 0
        self.history.clear()
        self.restarts += 1

    def batch(self):
        """This orbit's current state with its history, as a batch of one."""
        hx, hv, hdt = self.history.arrays()
        return self.m[None], self.x[None], self.v[None], np.array([self.dt]), hx[None], hv[None], hdt[None]

    def sample_record(self, batch, accepted_dt: float, rel_dE: float, retrains: int) -> dict:
        """One Samples row: the pre-step ``batch`` (from :meth:`batch`) with its history and metadata."""
        m, x, v, dt0, hx, hv, hdt = batch
        return {"m": m[0], "x": x[0], "v": v[0], "dt": dt0[0], "hist_x": hx[0], "hist_v": hv[0], "hist_dt": hdt[0],
                "orbit_id": self.orbit_id, "step": self.steps, "accepted_dt": accepted_dt, "rel_dE": rel_dE,
                "retrains": retrains}

    def advance(self, x1: np.ndarray, v1: np.ndarray, dt: float) -> bool:
        """Accept a step; returns True when the orbit was restarted afterwards."""
        self.history.push(self.x, self.v, self.dt)
        self.x, self.v, self.dt = x1, v1, dt
        self.t += dt * self.cfg.system.n_steps  # one step is n_steps leapfrog substeps of dt
        self.steps += 1
        if not (np.isfinite(x1).all() and np.isfinite(v1).all()) or \
                self.t >= self.cfg.system.periods_per_orbit * self.period:
            self.restart()
            return True
        return False

    def state_dict(self) -> dict:
        return {"orbit_id": self.orbit_id, "m": self.m.copy(), "x": self.x.copy(), "v": self.v.copy(),
                "t": self.t, "dt": self.dt, "steps": self.steps, "period": self.period,
                "restarts": self.restarts, "params": dict(self.params),
                "history": self.history.snapshot(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, st: dict) -> None:
        self.orbit_id = st["orbit_id"]
        self.m, self.x, self.v = (np.asarray(st[k], dtype=np.float64).copy() for k in ("m", "x", "v"))
        self.t, self.dt, self.steps, self.period = st["t"], st["dt"], st["steps"], st["period"]
        self.restarts, self.params = st["restarts"], dict(st["params"])
        self.history.restore(st["history"])
        self.rng.bit_generator.state = st["rng"]


# ---------------------------------------------------------------- Part 1
def retrain_until_accepted(model, optimizer, stepper: Stepper, prep: Prepared, cfg: Config):
    """Attempt; while rejected, one optimiser step on the band loss and attempt again.

    Returns (attempt, accepted, retrains, stuck) where ``stuck`` means the loop ended
    without acceptance (``max_retrain_steps`` reached, or a non-finite attempt that
    yields no usable gradient).
    """
    t = cfg.train
    retrains = 0
    while True:
        att = stepper.attempt(model, prep)
        if bool(att.passed(t.energy_threshold).all()):
            return att, True, retrains, False
        if not bool(torch.isfinite(att.rel_dE.detach()).all()):
            return att, False, retrains, True  # no gradient to learn from
        if t.max_retrain_steps and retrains >= t.max_retrain_steps:
            return att, False, retrains, False
        loss = band_loss(att.rel_dE, t.E_lower, t.E_upper).mean()
        if not optimizer_step(model, optimizer, loss):
            return att, False, retrains, True
        retrains += 1


def collect(model, optimizer, orbit: Orbit, stepper: Stepper, cfg: Config) -> tuple[Samples, dict]:
    """Part 1 on one orbit: ``steps_per_epoch`` step slots, each retrained until accepted.

    A slot whose loop hits ``max_retrain_steps`` is lost (the orbit stays where it is);
    a non-finite step restarts the orbit. Returns (samples, metrics).
    """
    t = cfg.train
    K = cfg.features.history_len
    records, retrain_counts, dts, errs = [], [], [], []
    limit_hits = nonfinite = restarts = warmup = 0
    for _ in range(t.steps_per_epoch):
        batch = orbit.batch()
        prep = stepper.prepare(*batch)
        att, accepted, retrains, stuck = retrain_until_accepted(model, optimizer, stepper, prep, cfg)
        retrain_counts.append(retrains)
        if not accepted:
            if stuck:
                nonfinite += 1
                orbit.restart()
                restarts += 1
            else:
                limit_hits += 1
            continue
        dt = float(att.dt.detach()[0])
        err = float(att.rel_dE.detach()[0])
        if t.band_on_accept and err < t.E_lower:
            optimizer_step(model, optimizer, band_loss(att.rel_dE, t.E_lower, t.E_upper, lower_only=True).mean())
        dts.append(dt)
        errs.append(err)
        if orbit.steps >= K:
            records.append(orbit.sample_record(batch, dt, err, retrains))
        else:
            warmup += 1
        x1 = att.x.detach()[0].to(torch.float64).cpu().numpy()
        v1 = att.v.detach()[0].to(torch.float64).cpu().numpy()
        restarts += orbit.advance(x1, v1, dt)
    samples = Samples.from_records(records, K, cfg.system.num_particles, cfg.system.dim)
    n_slots = t.steps_per_epoch
    metrics = {
        "collect/accepted": len(dts),
        "collect/samples": len(samples),
        "collect/warmup_discarded": warmup,
        "collect/mean_retrains": float(np.mean(retrain_counts)) if retrain_counts else 0.0,
        "collect/max_retrains": int(max(retrain_counts, default=0)),
        "collect/retrain_limit_hits": limit_hits,
        "collect/nonfinite": nonfinite,
        "collect/orbit_restarts": restarts,
        "collect/acceptance_rate": len(dts) / (len(dts) + sum(retrain_counts)) if n_slots else 0.0,
        "collect/mean_dt": float(np.mean(dts)) if dts else 0.0,
        "collect/mean_rel_dE": float(np.mean(errs)) if errs else 0.0,
    }
    return samples, metrics


# ---------------------------------------------------------------- Part 2
def generalize(model, optimizer, samples: Samples, stepper: Stepper, cfg: Config,
               rng: np.random.Generator) -> dict:
    """Part 2: minibatches of accepted samples, each evaluated as one batched attempt,
    one optimiser step on the failing samples' mean loss until a minibatch all passes.

    With ``train.band_on_accept`` the step's loss also holds the lower band edge of the
    passing samples (mean over the whole minibatch), so needlessly small steps are pushed up
    while Part 2 runs; the stopping rule stays the seed's.
    """
    t = cfg.train
    n = len(samples)
    metrics = {"generalize/n_samples": n, "generalize/iterations": 0, "generalize/converged": 1.0, "generalize/skipped": 0.0,
               "generalize/loss": 0.0, "generalize/pass_rate_first": 1.0, "generalize/pass_rate_last": 1.0,
               "generalize/nonfinite_skips": 0}
    if n < max(t.generalize_min_samples, 1):
        metrics["generalize/skipped"] = 1.0
        return metrics
    prep_all = stepper.prepare_samples(samples)  # features do not depend on the model: build once
    bs = min(t.generalize_batch_size, n)
    converged = False
    for it in range(t.generalize_steps):
        idx = torch.as_tensor(rng.choice(n, size=bs, replace=False), device=stepper.device)
        att = stepper.attempt(model, prep_all.take(idx))
        passed = att.passed(t.energy_threshold)
        rate = float(passed.double().mean())
        if it == 0:
            metrics["generalize/pass_rate_first"] = rate
        metrics["generalize/pass_rate_last"] = rate
        if bool(passed.all()):
            converged = True
            break
        per = band_loss(att.rel_dE, t.E_lower, t.E_upper)
        if t.band_on_accept:  # passing samples below E_lower add their lower-edge term
            per = torch.where(passed, band_loss(att.rel_dE, t.E_lower, t.E_upper, lower_only=True), per)
            loss = per.mean()
        else:
            loss = per[~passed].mean()
        metrics["generalize/loss"] = float(loss.detach())
        metrics["generalize/iterations"] = it + 1
        if not optimizer_step(model, optimizer, loss):
            metrics["generalize/nonfinite_skips"] += 1
    metrics["generalize/converged"] = float(converged)
    return metrics


def predict_dt(model, stepper: Stepper, m, x, v, dt, hist_x, hist_v, hist_dt) -> np.ndarray:
    """dt (B,) the model picks for B states with their histories (arrays shaped as in Samples)."""
    with torch.no_grad():
        return model(stepper.prepare(m, x, v, dt, hist_x, hist_v, hist_dt).feats).double().cpu().numpy()


def evaluate(model, stepper: Stepper, samples: Samples) -> torch.Tensor:
    """rel_dE (n,) of every sample under the current model, no gradients."""
    with torch.no_grad():
        return stepper.attempt(model, stepper.prepare_samples(samples)).rel_dE


def auto_norm_scales(cfg: Config) -> NormScales:
    """SPEC §2 normalisation from the run's reference initial conditions, once per run."""
    f, s = cfg.features, cfg.system
    if f.normalize_inputs == "none":
        return NormScales()
    if f.normalize_inputs == "manual":
        return NormScales(f.L0, f.V0, f.A0, f.T0)
    if s.ic == "kepler":  # the middle of the training range stands for the family of orbits
        m, x, v, _ = kepler_ic(0.5 * (s.e_min + s.e_max), 0.5 * (s.a_min + s.a_max), s.mass, s.dim)
    elif s.ic == "random":
        m, x, v = random_ic(s.num_particles, s.dim, s.mass, s.pos_scale, s.vel_scale,
                            np.random.default_rng(cfg.run.seed))
    else:
        m, x, v = load_ic_file(s.ic_path)
    return NormScales.from_state(m, x, v, s.softening)


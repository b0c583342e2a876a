"""Collector actor (docs/DESIGN.md §5.1) on the session's local Ray: collect's samples, broadcast weights, state."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from actors import Collector, Learner
from aits import Config, Samples, auto_norm_scales
from aits.physics import energy, leapfrog, rel_energy_error
from aits.samples import STATE_FIELDS, StateBatch

from helpers import tiny_dict


def _setup(**sections):
    cfg = Config.from_dict(tiny_dict(**sections))
    return cfg, cfg.to_dict(), auto_norm_scales(cfg).to_dict()


def test_collect_returns_post_warmup_samples_with_histories(ray_session):
    ray = ray_session
    # Unlimited retrains: every slot ends accepted, so the count is exact.
    cfg, conf, scales = _setup(train={"steps_per_epoch": 30, "max_retrain_steps": 0}, features={"history_len": 3})
    K, steps = 3, 30
    learner = ray.remote(num_cpus=0)(Learner).remote(conf, scales)
    collector = ray.remote(num_cpus=1)(Collector).remote(conf, scales, 1)
    weights_ref = ray.put(ray.get(learner.weights.remote()))
    samples, metrics = ray.get(collector.collect.options(num_returns=2).remote(weights_ref))

    assert isinstance(samples, Samples)
    assert metrics["part1/orbit_restarts"] == 0 and metrics["part1/retrain_limit_hits"] == 0
    assert metrics["part1/accepted"] == steps
    assert len(samples) == steps - K == metrics["part1/samples"]
    assert metrics["part1/warmup_discarded"] == K
    assert samples.hist_x.shape == (steps - K, K, 2, 2) and samples.hist_v.shape == (steps - K, K, 2, 2)
    assert samples.hist_dt.shape == (steps - K, K)
    assert (samples.rel_dE < cfg.train.energy_threshold).all()
    assert (samples.orbit_id == 1).all()
    np.testing.assert_array_equal(samples.step, np.arange(K, steps))
    # Past warm-up every history slot is a real state (no zero padding); only the initial
    # state, oldest in the first sample's history, was reached by no step (dt 0) ...
    assert (np.abs(samples.hist_x).sum(axis=(2, 3)) > 0).all()
    assert samples.hist_dt[0, 0] == 0 and (samples.hist_dt[0, 1:] > 0).all() and (samples.hist_dt[1:] > 0).all()
    # ... and a sample's newest history entry is the previous sample's state.
    np.testing.assert_array_equal(samples.hist_x[1:, -1], samples.x[:-1])
    np.testing.assert_array_equal(samples.hist_dt[1:, -1], samples.dt[:-1])
    np.testing.assert_array_equal(samples.dt[1:], samples.accepted_dt[:-1])
    # The recorded rel_dE is what a leapfrog step of the accepted dt gives from the stored state.
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    x1, v1, _ = leapfrog(t(samples.x), t(samples.v), t(samples.m), t(samples.accepted_dt))
    err = rel_energy_error(energy(t(samples.x), t(samples.v), t(samples.m)), energy(x1, v1, t(samples.m)))
    np.testing.assert_allclose(err.numpy(), samples.rel_dE, rtol=1e-9)


def test_dt_after_broadcast_equals_learner(ray_session):
    ray = ray_session
    cfg, conf, scales = _setup()
    learner = ray.remote(num_cpus=0)(Learner).remote(conf, scales)
    collector = ray.remote(num_cpus=1)(Collector).remote(conf, scales, 0)
    # Train the learner for a round so its weights differ from the collector's initial copy.
    w0 = ray.put(ray.get(learner.weights.remote()))
    samples_ref, _ = collector.collect.options(num_returns=2).remote(w0)
    metrics = ray.get(learner.step.remote(False, samples_ref))["metrics"]
    samples = ray.get(samples_ref)
    batch = StateBatch(**{k: getattr(samples, k) for k in STATE_FIELDS})  # the states alone, no metadata
    dt_learner = ray.get(learner.predict_dt.remote(batch))
    if metrics["part2/iterations"] > 0:
        assert not np.array_equal(ray.get(collector.predict_dt.remote(batch)), dt_learner)

    ray.get(collector.load_weights.remote(ray.put(ray.get(learner.weights.remote()))))
    dt_collector = ray.get(collector.predict_dt.remote(batch))
    assert dt_collector.shape == (len(samples),) and (dt_collector > 0).all()
    np.testing.assert_array_equal(dt_collector, dt_learner)


@pytest.mark.parametrize("systems", [1, 3])
def test_collector_state_restore_round_trip(ray_session, systems):
    ray = ray_session
    # dropout: the torch RNG matters too
    cfg, conf, scales = _setup(model={"dropout": 0.1}, ray={"systems_per_collector": systems})
    weights = ray.put(Learner(conf, scales).weights())
    first = ray.remote(num_cpus=1)(Collector).remote(conf, scales, 0)
    ray.get(first.collect.options(num_returns=2).remote(weights))  # move the orbit on
    state = ray.get(first.state.remote())
    expect_samples, expect_metrics = ray.get(first.collect.options(num_returns=2).remote(weights))

    # the state as it came out of the actor, through Ray's object store, into a new collector (in this
    # process: the same class, without a second actor's start-up)
    second = Collector(conf, scales, 0)
    second.restore(ray.get(ray.put(state)))
    samples, metrics = second.collect(ray.get(weights))
    assert len(samples) > 0 and set(samples.orbit_id) == set(range(systems))
    np.testing.assert_array_equal(state["systems"]["ids"], np.arange(systems))
    for name, value in expect_samples.to_dict().items():
        np.testing.assert_array_equal(getattr(samples, name), value, err_msg=name)
    metrics.pop("system/collect_time"), expect_metrics.pop("system/collect_time")
    assert metrics == expect_metrics
    # A fresh collector without the state starts the orbit over: different samples.
    fresh = Collector(conf, scales, 0)
    assert not np.array_equal(fresh.collect(ray.get(weights))[0].x[0], samples.x[0])
    with pytest.raises(ValueError):
        Collector(conf, scales, 1).restore(state)

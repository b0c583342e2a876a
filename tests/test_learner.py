"""Learner actor (docs/DESIGN.md §5.1) on the session's local Ray: generalize lowers failures; state round trip."""
from __future__ import annotations

import math

import torch

from actors import Collector, Learner
from aits import Config, Samples, auto_norm_scales, learning_rate

from helpers import tiny_dict


def _samples(conf, scales, n_collectors=2) -> Samples:
    """Accepted states gathered by collectors whose model steps with a small, safe dt."""
    weights = Learner(conf, scales).weights()
    return Samples.concat([Collector(conf, scales, i).collect(weights)[0] for i in range(n_collectors)])


def test_generalize_lowers_failing_fraction(ray_session):
    ray = ray_session
    small = Config.from_dict(tiny_dict(model={"init_dt": 0.002}, train={"steps_per_epoch": 60},
                                       system={"e_min": 0.85, "e_max": 0.95}))
    scales = auto_norm_scales(small).to_dict()
    samples = _samples(small.to_dict(), scales)
    assert len(samples) == 2 * (60 - 2)
    # The learner starts with a dt far too large near pericentre: most samples fail.
    big = tiny_dict(model={"init_dt": 0.05}, train={"generalize_steps": 300, "generalize_batch_size": 64},
                    system={"e_min": 0.85, "e_max": 0.95})
    thr = small.train.energy_threshold
    learner = ray.remote(num_cpus=0)(Learner).remote(big, scales)
    ref = ray.put(samples)
    before = float((ray.get(learner.evaluate.remote(ref)) >= thr).mean())
    metrics = ray.get(learner.step.remote(False, ref))["metrics"]
    after = float((ray.get(learner.evaluate.remote(ref)) >= thr).mean())
    assert before > 0.5
    assert after < 0.5 * before
    assert metrics["part2/n_samples"] == len(samples) and metrics["part2/iterations"] > 0
    assert metrics["part2/pass_rate_first"] < metrics["part2/pass_rate_last"]


def test_generalize_skips_small_sets():
    cfg = Config.from_dict(tiny_dict(train={"generalize_min_samples": 10}))
    conf, scales = cfg.to_dict(), auto_norm_scales(cfg).to_dict()
    learner = Learner(conf, scales)
    before = learner.weights()
    metrics = learner.step(False, _samples(conf, scales, 1).take(slice(0, 5)))["metrics"]
    assert metrics["part2/skipped"] == 1.0 and metrics["part2/converged"] == 1.0
    assert all(torch.equal(before[k], v) for k, v in learner.weights().items())


def test_learner_state_restore_round_trip(ray_session):
    ray = ray_session
    # with an lr schedule: the restored learner must go on at the epoch it was saved at (its lr is in the metrics)
    cfg = Config.from_dict(tiny_dict(train={"generalize_capacity": 50, "epochs": 3, "lr": 1e-3, "lr_final": 1e-5},
                                     model={"init_dt": 0.03}))
    conf, scales = cfg.to_dict(), auto_norm_scales(cfg).to_dict()
    samples = _samples(conf, scales)
    assert len(samples) > 20
    part_a, part_b = samples.take(slice(0, 20)), samples.take(slice(20, None))

    first = ray.remote(num_cpus=0)(Learner).remote(conf, scales)
    ray.get(first.step.remote(False, part_a))  # fills the kept samples, moves model, Adam and RNG
    state = ray.get(first.state.remote())
    assert len(state["kept"]["dt"]) == 20
    expect = ray.get(first.step.remote(False, part_b))["metrics"]
    expect_weights = ray.get(first.weights.remote())

    other = dict(conf, run={**conf["run"], "seed": 99})  # different initial weights and RNG
    second = ray.remote(num_cpus=0)(Learner).remote(other, scales)
    ray.get(second.restore.remote(state))
    got = ray.get(second.step.remote(False, part_b))["metrics"]
    got_weights = ray.get(second.weights.remote())
    expect.pop("system/learner_time"), got.pop("system/learner_time")
    assert got == expect and got["part2/n_samples"] == 20 + len(part_b)
    assert got["system/lr"] == learning_rate(cfg, 2) and 1e-5 < got["system/lr"] < 1e-3
    assert all(torch.equal(got_weights[k], v) for k, v in expect_weights.items())
    assert len(ray.get(second.state.remote())["kept"]["dt"]) == min(50, len(samples))


def test_learning_rate_schedule():
    """train.lr_final: a half cosine from lr at epoch 1 to lr_final at the last epoch, held after it; the learner
    sets it on its optimiser each epoch."""
    flat = Config.from_dict(tiny_dict(train={"lr": 3e-3, "epochs": 5}))
    assert [learning_rate(flat, e) for e in (1, 3, 9)] == [3e-3, 3e-3, 3e-3]
    cfg = Config.from_dict(tiny_dict(train={"lr": 3e-3, "lr_final": 1e-4, "epochs": 5}))
    lrs = [learning_rate(cfg, e) for e in range(1, 8)]
    assert math.isclose(lrs[0], 3e-3) and math.isclose(lrs[4], 1e-4) and lrs[5] == lrs[6] == lrs[4]
    assert math.isclose(lrs[2], 0.5 * (3e-3 + 1e-4))  # the middle epoch: halfway
    assert all(a > b for a, b in zip(lrs[:4], lrs[1:5]))
    conf, scales = cfg.to_dict(), auto_norm_scales(cfg).to_dict()
    learner = Learner(conf, scales)
    part = _samples(conf, scales, 1)
    for epoch in (1, 2):
        assert learner.step(False, part)["metrics"]["system/lr"] == lrs[epoch - 1]
        assert learner.optimizer.param_groups[0]["lr"] == lrs[epoch - 1]

"""system.ic: mixture — each family drawn with its weight, padded with far massless bodies, ICs that are
what they claim (checked with REBOUND's orbital elements), restarts and RNG state as for the other ICs,
bad mixture configs one line each, and a short real training run on configs/ray.yaml."""
from __future__ import annotations

import math

import numpy as np
import pytest
import rebound
import torch

from aits import Config, ConfigError, load_checkpoint
from aits.families import FAMILIES, NO_FAMILY, SOFT_EPS_RANGE, eccentric_anomaly
from aits.features import scale_free_torch
from aits.physics import acceleration, crossing_time, energy
from aits.systems import Systems
from driver.train import main

CODE = {name: i for i, name in enumerate(FAMILIES)}


def mixture_cfg(*sets: str, n: int = 4, dim: int = 3) -> Config:
    return Config.from_dict({}, ["system.ic=mixture", f"system.num_particles={n}", f"system.dim={dim}", *sets])


def systems(cfg: Config, count: int, seed: int = 0) -> Systems:
    return Systems(cfg, np.arange(count), [np.random.default_rng([seed, i]) for i in range(count)])


def massive(st: Systems, i: int):
    """(m, x, v) of system i's massive bodies."""
    keep = st.m[i] > 0
    return st.m[i][keep], st.x[i][keep], st.v[i][keep]


def sim_of(m, x, v) -> rebound.Simulation:
    sim = rebound.Simulation()  # G = 1
    for mi, xi, vi in zip(m, x, v):
        xi, vi = np.pad(xi, (0, 3 - len(xi))), np.pad(vi, (0, 3 - len(vi)))
        sim.add(m=float(mi), x=xi[0], y=xi[1], z=xi[2], vx=vi[0], vy=vi[1], vz=vi[2])
    return sim


def normal(orbit) -> np.ndarray:
    """The orbit's unit normal from its inclination and node."""
    i, node = orbit.inc, orbit.Omega
    return np.array([math.sin(i) * math.sin(node), -math.sin(i) * math.cos(node), math.cos(i)])


def test_mixture_draws_each_family_with_its_weight_on_restarts():
    for weights in ({"binary": 0.4, "triple": 0.3, "planets": 0.2, "few_body": 0.1}, {"binary": 1, "planets": 3},
                    {"binary": 2, "few_body": 1, "soft_few_body": 1}, {"triple": 1, "cold_few_body": 1}):
        cfg = mixture_cfg("system.mixture={" + ", ".join(f"{k}: {w}" for k, w in weights.items()) + "}",
                          "features.feature_type=scale_free")
        st = systems(cfg, 8)
        counts = np.zeros(len(FAMILIES))
        for _ in range(500):  # 4000 restarts, each drawn from its system's own RNG
            st.restart(np.arange(8))
            counts += np.bincount(st.family, minlength=len(FAMILIES))
        assert (st.restarts == 500).all()
        total = sum(weights.values())
        for name, code in CODE.items():
            w = weights.get(name, 0) / total
            assert abs(counts[code] / 4000 - w) <= 3 * math.sqrt(w * (1 - w) / 4000), (weights, name, counts)


ALL_FAMILIES = ("system.mixture={binary: 0.4, triple: 0.3, planets: 0.2, few_body: 0.1, soft_few_body: 0.1, "
                "cold_few_body: 0.1}")


def test_padding_bodies_are_massless_far_distinct_and_change_nothing():
    st = systems(mixture_cfg(ALL_FAMILIES, "features.feature_type=scale_free", n=6), 400)
    n_massive = (st.m > 0).sum(1)
    ranges = {"binary": {2}, "triple": {3}, "planets": {3, 4}, "few_body": {3, 4, 5, 6}, "soft_few_body": {3, 4, 5, 6},
              "cold_few_body": {3, 4, 5, 6}}
    for name, code in CODE.items():
        assert set(n_massive[st.family == code]) == ranges[name], name
    for i in range(len(st)):
        k = n_massive[i]
        assert (st.m[i, :k] > 0).all() and (st.m[i, k:] == 0).all()  # massive first, then the padding
        m, x, v = massive(st, i)
        np.testing.assert_allclose((m[:, None] * x).sum(0) / m.sum(), 0, atol=1e-12)  # centre of mass at rest
        np.testing.assert_allclose((m[:, None] * v).sum(0), 0, atol=1e-12)
        pad_x = st.x[i, k:]
        assert (st.v[i, k:] == 0).all()
        size = np.linalg.norm(x, axis=1).max()
        assert (np.linalg.norm(pad_x, axis=1) >= 0.999e4 * size).all()
        gaps = np.linalg.norm(pad_x[:, None] - pad_x[None], axis=-1)[np.triu_indices(len(pad_x), 1)]
        assert (gaps >= 0.999e4 * size).all()  # distinct, and as far from each other
    # a padded system has the energy, massive-body accelerations and scale-free features of the unpadded one
    for code in range(len(FAMILIES)):
        i = int(np.nonzero((st.family == code) & (n_massive < 6))[0][0])
        k = n_massive[i]
        full = [torch.as_tensor(a[i][None]) for a in (st.x, st.v, st.m)]
        bare = [torch.as_tensor(a[i][None, :k]) for a in (st.x, st.v, st.m)]
        eps = float(st.eps[i])  # 0 but for soft_few_body
        acc_full, acc_bare = acceleration(full[0], full[2], eps), acceleration(bare[0], bare[2], eps)
        torch.testing.assert_close(acc_full[:, :k], acc_bare, rtol=1e-12, atol=0)
        torch.testing.assert_close(energy(*full, eps), energy(*bare, eps), rtol=1e-12, atol=0)
        f_full, tau_full = scale_free_torch(full[0], full[1], acc_full, full[2], eps)
        f_bare, tau_bare = scale_free_torch(bare[0], bare[1], acc_bare, bare[2], eps)
        torch.testing.assert_close(f_full, f_bare, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(tau_full, tau_bare, rtol=1e-12, atol=0)


def test_binary_elements_masses_and_phases_are_as_drawn():
    st = systems(mixture_cfg("system.mixture={binary: 1}", n=2), 1500)
    assert (st.family == CODE["binary"]).all()
    e_seen, r_over_a, cos_inc = [], [], []
    for i in range(len(st)):
        m, x, v = massive(st, i)
        orbit = sim_of(m, x, v).particles[1].orbit()
        assert orbit.e == pytest.approx(st.e[i], rel=1e-9, abs=1e-10)
        assert orbit.a == pytest.approx(st.a[i], rel=1e-9)
        assert orbit.P == pytest.approx(st.period[i], rel=1e-9)
        assert m[0] == 1.0 and 1e-4 <= m[1] <= 1.0 and 0.5 <= st.a[i] <= 2.0 and st.e[i] <= 0.995
        e_seen.append(st.e[i])
        r_over_a.append(np.linalg.norm(x[1] - x[0]) / st.a[i])
        cos_inc.append(math.cos(orbit.inc))
    e_seen = np.array(e_seen)
    assert abs((e_seen > 0.9).mean() - 0.5) < 0.05 and e_seen.max() > 0.99  # half near-radial, up to 0.995
    # a uniform mean anomaly: the time-averaged r/a is 1 + e^2/2, not a pericentre start (1 - e)
    mean_r = np.mean(r_over_a) / np.mean(1 + e_seen ** 2 / 2)
    assert 0.97 < mean_r < 1.03
    assert abs(np.mean(cos_inc)) < 0.06 and abs(np.mean(np.abs(cos_inc)) - 0.5) < 0.04  # isotropic normals


def test_apsis_starts_put_a_share_of_orbits_at_pericentre_or_apocentre():
    """``system.apsis_starts``: that share of the drawn orbits starts at an apsis (REBOUND's true anomaly 0 or
    pi), the rest as before; with the share 0 the draws are the old ones, bit for bit."""
    plain = systems(mixture_cfg("system.mixture={binary: 1}", n=2), 200)
    zero = systems(mixture_cfg("system.mixture={binary: 1}", "system.apsis_starts=0", n=2), 200)
    assert np.array_equal(plain.x, zero.x) and np.array_equal(plain.v, zero.v)
    st = systems(mixture_cfg("system.mixture={binary: 1}", "system.apsis_starts=0.3", n=2), 1500)
    at = []
    for i in range(len(st)):
        m, x, v = massive(st, i)
        orbit = sim_of(m, x, v).particles[1].orbit()
        assert orbit.e == pytest.approx(st.e[i], rel=1e-9, abs=1e-10)  # the same orbits, other phases
        f = math.remainder(orbit.f, 2 * math.pi)
        at.append("peri" if abs(f) < 1e-6 else "apo" if abs(abs(f) - math.pi) < 1e-6 else "")
    peri, apo = at.count("peri") / len(at), at.count("apo") / len(at)
    assert abs(peri - 0.15) < 0.03 and abs(apo - 0.15) < 0.03, (peri, apo)
    # every orbit of a triple (inner and outer) and of a planetary system starts at an apsis with share 1
    for fam, n in (("triple", 3), ("planets", 4)):
        st = systems(mixture_cfg(f"system.mixture={{{fam}: 1}}", "system.apsis_starts=1", n=n), 40)
        for i in range(len(st)):
            m, x, v = massive(st, i)
            r = x - x[0] if fam == "planets" else None
            u = v - v[0] if fam == "planets" else None
            if fam == "planets":  # heliocentric orbits: r . u = 0 at an apsis
                assert np.allclose(np.einsum("ij,ij->i", r[1:], u[1:]), 0.0, atol=1e-12)
            else:  # the inner pair's relative orbit, and the third body's about the pair's centre of mass
                rin, uin = x[1] - x[0], v[1] - v[0]
                c = (m[:2, None] * x[:2]).sum(0) / m[:2].sum()
                cv = (m[:2, None] * v[:2]).sum(0) / m[:2].sum()
                assert abs(rin @ uin) < 1e-12 and abs((x[2] - c) @ (v[2] - cv)) < 1e-12


def test_kepler_equation_is_solved_up_to_radial_orbits():
    for e in (0.0, 0.5, 0.9, 0.995, 0.9999):
        for mean_anomaly in np.linspace(-3.1, 3.1, 41):
            big_e = eccentric_anomaly(mean_anomaly, e)
            assert big_e - e * math.sin(big_e) == pytest.approx(mean_anomaly, abs=1e-12)


def test_triples_are_hierarchical_and_stable():
    st = systems(mixture_cfg("system.mixture={triple: 1}", n=3), 600)
    cos_mutual = []
    for i in range(len(st)):
        m, x, v = massive(st, i)
        inner, outer = sim_of(m, x, v).orbits()  # Jacobi: the third body about the pair's centre of mass
        assert inner.e == pytest.approx(st.e[i], rel=1e-9, abs=1e-10) and inner.a == pytest.approx(st.a[i], rel=1e-9)
        assert inner.P == pytest.approx(st.period[i], rel=1e-9)
        assert inner.e <= 0.95 and outer.e <= 0.5 + 1e-12
        q_out = m[2] / (m[0] + m[1])
        assert 1e-3 * (1 - 1e-12) <= q_out <= 1 + 1e-12
        cos_i = float(normal(inner) @ normal(outer))
        cos_mutual.append(cos_i)
        ratio = outer.a / inner.a
        assert ratio * (1 - outer.e) > 3
        # Mardling & Aarseth (2001): stable when a_out / a_in exceeds
        # 2.8 (1 + q_out)^(2/5) (1 + e_out)^(2/5) (1 - e_out)^(-6/5) (1 - 0.3 i / 180 deg)
        limit = (2.8 * (1 + q_out) ** 0.4 * (1 + outer.e) ** 0.4 * (1 - outer.e) ** -1.2
                 * (1 - 0.3 * math.acos(np.clip(cos_i, -1, 1)) / math.pi))
        assert ratio > limit, (ratio, limit)
    assert abs(np.mean(cos_mutual)) < 0.08 and abs(np.mean(np.abs(cos_mutual)) - 0.5) < 0.05  # isotropic


def test_planets_have_the_drawn_spacings_eccentricities_and_inclinations():
    st = systems(mixture_cfg("system.mixture={planets: 1}"), 400)
    widest = 0.0
    for i in range(len(st)):
        m, x, v = massive(st, i)
        sim = sim_of(m, x, v)
        orbits = [sim.particles[k].orbit(primary=sim.particles[0]) for k in range(1, len(m))]
        assert len(orbits) in (2, 3) and m[0] == 1.0 and ((1e-6 <= m[1:]) & (m[1:] <= 1e-3)).all()
        assert orbits[0].a == pytest.approx(1.0, rel=1e-9) and orbits[0].P == pytest.approx(st.period[i], rel=1e-9)
        assert st.e[i] == pytest.approx(orbits[0].e, rel=1e-9, abs=1e-10)
        for inner, outer in zip(orbits, orbits[1:]):
            assert 1.5 - 1e-9 <= outer.a / inner.a <= 3 + 1e-9
        assert all(o.e <= 0.3 + 1e-12 for o in orbits)
        for j, a in enumerate(orbits):  # each within 5 deg of the system's plane: no two more than 10 deg apart
            for b in orbits[j + 1:]:
                angle = math.degrees(math.acos(np.clip(normal(a) @ normal(b), -1, 1)))
                assert angle <= 10 + 1e-9
                widest = max(widest, angle)
    assert widest > 5  # inclinations are drawn, not all zero


def test_few_body_systems_and_planar_mixtures():
    cfg = mixture_cfg("system.mixture={few_body: 1}", n=6)
    st = systems(cfg, 200)
    assert set((st.m > 0).sum(1)) == {3, 4, 5, 6} and np.isnan(st.e).all() and np.isnan(st.a).all()
    for i in range(20):
        m, x, _ = massive(st, i)
        assert st.period[i] == pytest.approx(crossing_time(m, x), rel=1e-12)
    flat = systems(mixture_cfg(dim=2), 300)
    assert flat.x.shape[-1] == 2
    for i in np.nonzero(flat.family == CODE["binary"])[0][:30]:
        orbit = sim_of(*massive(flat, i)).particles[1].orbit()
        assert orbit.e == pytest.approx(flat.e[i], rel=1e-9, abs=1e-10)
        assert orbit.a == pytest.approx(flat.a[i], rel=1e-9)
    for i in np.nonzero(flat.family == CODE["triple"])[0][:30]:  # coplanar, either way round
        inner, outer = sim_of(*massive(flat, i)).orbits()
        assert abs(normal(inner) @ normal(outer)) == pytest.approx(1.0, abs=1e-12)


def test_systems_restart_after_their_horizon_and_rng_state_round_trips():
    cfg = mixture_cfg("system.periods_per_orbit=2.5", "system.restart_after=7")
    st = systems(cfg, 64)
    horizon = np.where(st.family == CODE["few_body"], 7.0, 2.5) * st.period
    idx = np.arange(64)
    first = st.family.copy()
    # one step to just short of the horizon: no restart; the next passes it: every system restarts
    assert len(st.advance(idx, st.x.copy(), st.v.copy(), horizon * (1 - 1e-9))) == 0
    assert (st.restarts == 0).all() and (st.steps == 1).all()
    assert (st.advance(idx, st.x.copy(), st.v.copy(), horizon * 1e-8) == idx).all()
    assert (st.restarts == 1).all() and (st.t == 0).all() and (st.steps == 0).all()
    assert (st.family != first).any()  # redrawn
    bad = st.x.copy()
    bad[3, 0, 0] = np.nan  # a non-finite state restarts that system only
    assert list(st.advance(idx, bad, st.v.copy(), np.full(64, 1e-6))) == [3]
    # the state dict (what a checkpoint stores) restores families, elements and the RNG streams
    state = st.state_dict()
    other = systems(cfg, 64, seed=99)
    other.load_state_dict(state)
    for name in ("family", "e", "a", "period", "m", "x", "v", "restarts"):
        np.testing.assert_array_equal(getattr(other, name), getattr(st, name))
    st.restart(idx)
    other.restart(idx)
    for name in ("family", "m", "x", "v", "period"):
        np.testing.assert_array_equal(getattr(other, name), getattr(st, name))
    # a state from before the family field loads with NO_FAMILY
    old = {k: v for k, v in state.items() if k != "family"}
    other.load_state_dict(old)
    assert (other.family == NO_FAMILY).all()


def test_soft_few_body_systems_carry_their_own_softening_through_restarts_and_state():
    """soft_few_body: each system its own eps (eps / mean pair distance within SOFT_EPS_RANGE), every other
    family the run's system.softening; eps restarts with the system and round-trips through the state."""
    cfg = mixture_cfg("system.mixture={binary: 1, few_body: 1, soft_few_body: 2}", "system.softening=0.003",
                      "system.restart_after=7", "features.feature_type=scale_free", n=5)
    st = systems(cfg, 300)
    soft = st.family == CODE["soft_few_body"]
    assert 100 < soft.sum() < 200
    assert (st.eps[~soft] == 0.003).all()
    lo, hi = SOFT_EPS_RANGE
    ratios = []
    for i in np.nonzero(soft)[0]:
        m, x, _ = massive(st, i)
        assert len(m) in (3, 4, 5) and st.period[i] == pytest.approx(crossing_time(m, x), rel=1e-12)
        pairs = np.linalg.norm(x[:, None] - x[None], axis=-1)[np.triu_indices(len(m), 1)]
        ratios.append(st.eps[i] / pairs.mean())
    assert lo <= min(ratios) and max(ratios) <= hi and max(ratios) / min(ratios) > 5  # spread over the range
    # soft systems restart after restart_after crossing times, as few_body
    horizon = np.where(np.isin(st.family, [CODE["few_body"], CODE["soft_few_body"]]), 7.0, 3.0) * st.period
    idx = np.arange(len(st))
    assert len(st.advance(idx, st.x.copy(), st.v.copy(), horizon * (1 - 1e-9))) == 0
    before = st.eps.copy()
    assert (st.advance(idx, st.x.copy(), st.v.copy(), horizon * 1e-8) == idx).all()
    assert not np.array_equal(st.eps, before) and (st.eps[st.family != CODE["soft_few_body"]] == 0.003).all()
    other = systems(cfg, 300, seed=5)
    other.load_state_dict(st.state_dict())
    np.testing.assert_array_equal(other.eps, st.eps)
    old = {k: v for k, v in st.state_dict().items() if k != "eps"}  # a state from before the field
    other.load_state_dict(old)
    assert (other.eps == 0).all()
    # the batch a collector steps carries each state's softening
    np.testing.assert_array_equal(st.batch().eps, st.eps)


def test_each_state_steps_with_its_own_softening():
    """A mixture with soft_few_body: the stepper's batched features, energies and steps of states with
    different softenings are those of each state stepped alone under its own system.softening; without
    the family the run's softening applies to all (StateBatch.eps ignored)."""
    from aits import NormScales, Stepper, build_model
    from aits.samples import StateBatch

    base = ["system.mixture={triple: 1, soft_few_body: 1}", "features.feature_type=scale_free",
            "features.timescale=blend", "model.output=factor", "model.init_factor=0.02", "model.recursive=true"]
    cfg = mixture_cfg(*base)
    st = systems(cfg, 12)
    assert len(set(st.eps.tolist())) > 3  # several softenings in one batch
    model = build_model(cfg)
    batch = Stepper(cfg, NormScales()).prepare(st.batch())
    att = Stepper(cfg, NormScales()).attempt(model, batch)
    for i in range(len(st)):
        alone = Stepper(mixture_cfg(*base[1:], f"system.softening={float(st.eps[i])!r}"), NormScales())
        assert not alone.per_system_eps
        one = alone.prepare(StateBatch.start(st.m[i:i + 1], st.x[i:i + 1], st.v[i:i + 1]))
        torch.testing.assert_close(batch.feats[i:i + 1], one.feats, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(batch.e0[i:i + 1], one.e0, rtol=1e-13, atol=0)
        a1 = alone.attempt(model, one)
        torch.testing.assert_close(att.e1[i:i + 1], a1.e1, rtol=1e-13, atol=0)
        torch.testing.assert_close(att.x[i:i + 1], a1.x, rtol=1e-13, atol=1e-15)
    assert float(batch.feats[:, 6].max()) > 0.05  # the softening feature eps / (r + eps) moves
    plain = Stepper(mixture_cfg("system.mixture={triple: 1}", *base[1:]), NormScales())
    assert not plain.per_system_eps and plain.prepare(st.batch()).eps is None


@pytest.mark.parametrize("sets, needle", [
    (["system.mixture={binary: 1, tripel: 1}"], "system.mixture: unknown family 'tripel' (did you mean 'triple'?)"),
    (["system.mixture={binary: -0.5, triple: 1}"], "system.mixture: every value must be >= 0"),
    (["system.mixture={binary: 0, planets: 0}"], "system.mixture: no family has a positive weight"),
    (["system.mixture=binary"], "system.mixture: expected a mapping"),
    (["system.apsis_starts=1.5"], "system.apsis_starts"),
    (["system.num_particles=3"], "system.num_particles: mixture family 'planets' needs 4 bodies, got 3"),
    (["system.num_particles=2", "system.mixture={binary: 1, few_body: 1}"],
     "system.num_particles: mixture family 'few_body' needs 3 bodies, got 2"),
    (["system.mixture={binary: 1, soft_few_body: 1}", "features.feature_type=rich", "features.history_len=1"],
     "system.mixture: soft_few_body (each system its own softening) needs features.feature_type scale_free"),
])
def test_bad_mixture_configs_give_one_line_each(sets, needle):
    with pytest.raises(ConfigError) as err:
        Config.from_dict({}, ["system.ic=mixture", "system.num_particles=4", *sets])
    assert len(err.value.problems) == 1 and err.value.problems[0].startswith(needle), err.value.problems


def test_two_epoch_mixture_run_on_the_ray_config(tmp_path, capsys):
    sets = ["system.ic=mixture", "system.num_particles=4", "system.dim=3", "ray.inprocess=true", "train.epochs=2",
            "wandb.mode=disabled", f"run.output_dir={tmp_path}", "run.checkpoint_interval=1"]
    args = ["--config", "configs/ray.yaml"] + [a for s in sets for a in ("--set", s)]
    assert main(args) == 0
    assert "Training complete: 2 epochs" in capsys.readouterr().out
    ckpt = load_checkpoint(sorted((tmp_path / "ray_run" / "model").glob("*.pt"))[-1])
    assert ckpt["config"]["system"]["mixture"] == {"binary": 0.4, "triple": 0.3, "planets": 0.2, "few_body": 0.1}
    assert ckpt["config_summary"].startswith("mixture(binary:0.4 triple:0.3 planets:0.2 few_body:0.1) N=4 D=3")
    families = np.concatenate([c["systems"]["family"] for c in ckpt["extra"]["collectors"]])
    assert set(families) == {CODE[f] for f in ("binary", "triple", "planets", "few_body")}  # 128 systems: every
    # family of the default mixture in training
    assert all(np.isfinite(c["systems"]["x"]).all() for c in ckpt["extra"]["collectors"])
    # the run resumes from its checkpoint: the collector states load back under the config
    assert main(args + ["--set", "train.epochs=3", "--resume", "auto"]) == 0
    assert "Training complete: 3 epochs" in capsys.readouterr().out


def test_samples_carry_each_states_family():
    """write_samples records each state's family (what train.passage_apsis_families selects by); an unwritten
    row is NO_FAMILY, not family 0; samples kept from before the field concatenate to none."""
    from aits.samples import Samples

    s = systems(mixture_cfg("system.mixture={binary: 1, triple: 1, few_body: 1}"), 12)
    out = Samples.empty(0, s.N, s.D, capacity=14)
    end = s.write_samples(out, 0, np.arange(12), np.ones(12), np.zeros(12), np.zeros(12, dtype=np.int64))
    assert np.array_equal(out.family[:end], s.family) and len(set(s.family.tolist())) == 3
    assert np.all(out.family[end:] == NO_FAMILY)
    old = out.take(slice(0, 2))
    old.family = None
    assert Samples.concat([out, old]).family is None
    assert np.array_equal(Samples.concat([out, out]).family[14:26], s.family)


def test_cold_few_body_systems_start_cold_with_unequal_masses():
    """cold_few_body: masses loguniform in COLD_MASS_RANGE, velocities few_body's times q uniform in [0, 1] (so
    the virial ratio 2T/|W| spreads down to 0: cold collapses), restarts after restart_after crossing times;
    from rest the bodies fall into deeper close encounters than few_body's (REBOUND IAS15 as the reference)."""
    from aits.families import COLD_MASS_RANGE
    cfg = mixture_cfg("system.mixture={few_body: 1, cold_few_body: 1}", "features.feature_type=scale_free", n=3)
    st = systems(cfg, 600)
    cold, warm = st.family == CODE["cold_few_body"], st.family == CODE["few_body"]
    assert 200 < cold.sum() < 400
    assert (st.m[cold] >= COLD_MASS_RANGE[0]).all() and (st.m[cold] <= COLD_MASS_RANGE[1]).all()
    assert np.median(st.m[cold].max(1) / st.m[cold].min(1)) > 1.5 and (st.m[warm] == 1.0).all()

    def virial(i):
        m, x, v = massive(st, i)
        kinetic = 0.5 * (m * (v * v).sum(1)).sum()
        r = np.linalg.norm(x[:, None] - x[None], axis=-1)[np.triu_indices(len(m), 1)]
        mm = (m[:, None] * m[None])[np.triu_indices(len(m), 1)]
        return 2 * kinetic / (mm / r).sum()

    q_cold = np.array([virial(i) for i in np.flatnonzero(cold)])
    q_warm = np.array([virial(i) for i in np.flatnonzero(warm)])
    assert np.median(q_cold) < 0.5 * np.median(q_warm) and (q_cold < 0.01 * np.median(q_warm)).mean() > 0.03
    idx = np.flatnonzero(cold)
    assert (st.horizon(idx) == cfg.system.restart_after).all()  # crossing-time restarts, as few_body
    assert all(st.period[i] == pytest.approx(crossing_time(*massive(st, i)[:2]), rel=1e-12) for i in idx)
    # the closest approach over two crossing times, relative to the start's mean distance (REBOUND, IAS15)

    def closest(i):
        m, x, v = massive(st, i)
        sim = sim_of(m, x, v)
        sim.integrator = "ias15"
        r0 = np.linalg.norm(x[:, None] - x[None], axis=-1)[np.triu_indices(len(m), 1)].mean()
        best = math.inf
        for t in np.linspace(0, 2 * st.period[i], 200)[1:]:
            sim.integrate(t)
            p = np.array([[q.x, q.y, q.z] for q in sim.particles])
            best = min(best, np.linalg.norm(p[:, None] - p[None], axis=-1)[np.triu_indices(len(m), 1)].min())
        return best / r0

    depth_cold = np.median([closest(i) for i in np.flatnonzero(cold)[:20]])
    depth_warm = np.median([closest(i) for i in np.flatnonzero(warm)[:20]])
    assert depth_cold < 0.7 * depth_warm, (depth_cold, depth_warm)

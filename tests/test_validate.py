"""driver/validate.py: every checkpoint of a run scored on one fixed held-out set; the best copied."""
import json
import math

import numpy as np
import pytest
import torch

from aits import Config, NormScales, build_model, build_payload, save_checkpoint
from aits.checkpoint import checkpoint_path, load_checkpoint
from aits.systems import Systems
from driver import validate as V
from helpers import mixture_factor_cfg, perturbed_model

CFG = mixture_factor_cfg()


def _save(run, epoch, model):
    save_checkpoint(checkpoint_path(run, epoch),
                    build_payload(epoch, model.state_dict(), None, CFG, NormScales().to_dict()))


def test_validation_set_is_fixed_and_apart_from_training_draws():
    a = V.validation_states(CFG, 6)
    b = V.validation_states(CFG, 6)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    train = Systems.for_collector(CFG, 0, 6)
    assert not np.array_equal(a[1], train.x)
    assert (a[0] > 0).sum(1).min() >= 2  # every system has at least two massive bodies (padding massless)


def test_a_run_trained_with_apsis_starts_is_judged_with_them():
    """train.passage_apsis s: the last round(s * n) validation systems are drawn from the same streams with
    every Kepler orbit at an apsis (a binary: the same energy and |L|, at an apsis); the others are the plain set's."""
    n = 16
    plain = V.validation_states(CFG, n)
    half = V.validation_states(Config.from_dict(CFG.to_dict(), ["train.passage_apsis=0.5"]), n)
    assert all(np.array_equal(p[:8], q[:8]) for p, q in zip(plain, half))
    # the same families and first pairs (a triple's or planetary system's later orbits draw from a stream
    # the apsis start has used differently)
    assert np.array_equal((plain[0] > 0).sum(1), (half[0] > 0).sum(1)) and np.array_equal(plain[0][:, :2], half[0][:, :2])
    binaries = [i for i in range(8, n) if (half[0][i] > 0).sum() == 2]
    assert binaries, "the set's last half holds a binary"
    for i in binaries:
        def orbit(states):  # the pair's specific energy, angular momentum and r . v
            m, x, v = states[0][i], states[1][i], states[2][i]
            r, u = x[1] - x[0], v[1] - v[0]
            return 0.5 * u @ u - (m[0] + m[1]) / np.linalg.norm(r), np.cross(r, u), r @ u / np.linalg.norm(r)
        e0, l0, rv0 = orbit(plain)
        e1, l1, rv1 = orbit(half)
        assert e1 == pytest.approx(e0, rel=1e-9) and np.linalg.norm(l1) == pytest.approx(np.linalg.norm(l0), rel=1e-9)
        assert abs(rv1) < 1e-9 * np.linalg.norm(half[2][i][1] - half[2][i][0]) and abs(rv0) > 1e-6


def test_picks_the_lowest_loss_and_never_a_blown_up_rule(tmp_path, capsys):
    run = tmp_path / "run"
    torch.manual_seed(0)
    models = [build_model(CFG) for _ in range(3)]
    with torch.no_grad():
        for p in models[1].parameters():  # a rule whose factor swings with the state
            p.add_(2.0 * torch.randn_like(p))
        for p in models[2].parameters():  # a rule that blows up: non-finite steps
            p.fill_(float("nan"))
    for epoch, model in zip((10, 20, 30), models):
        _save(run, epoch, model)
    assert V.main([str(run), "--systems", "8"]) == 0
    doc = json.loads((run / "selection.json").read_text())
    losses = {int(e): v["loss"] for e, v in doc["epochs"].items()}
    assert doc["epochs"]["30"]["blown_up"] == 8 and doc["best_epoch"] != 30
    assert math.isfinite(losses[10]) and math.isfinite(losses[20]) and losses[10] != losses[20]
    best = min((10, 20), key=losses.get)
    assert doc["best_epoch"] == best
    chosen = load_checkpoint(run / "model" / "model_best.pt")
    assert chosen["epoch"] == best
    # the loss is the passage objective of the rule on the fixed set: recomputed, the same number
    states = V.validation_states(CFG, 8)
    assert doc["steps"] == V.default_steps(CFG) == 3 * CFG.train.passage_steps
    again, blown = V.validation_loss(chosen, CFG, states, V.default_steps(CFG))
    assert blown == 0 and again == losses[best]
    assert "best epoch" in capsys.readouterr().out


def test_no_checkpoints_is_one_error_line(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    try:
        V.main([str(tmp_path)])
    except SystemExit as exc:
        assert exc.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("no model_epoch_*.pt checkpoints")


def test_default_window_covers_a_full_inner_period_of_every_validation_system():
    """The shipped generalist's validation rollouts (the classical rule it contains, 3 x passage_steps) cover at
    least one inner period of every held-out system; training's own window does not (why the default is longer)."""
    from aits import Config, Stepper
    from aits.passage import rollout

    cfg = Config.load("configs/generalist.yaml")
    systems = V.drawn_systems(cfg, 96)
    stepper = Stepper(cfg, NormScales())
    with torch.no_grad():
        _, T, _ = rollout(build_model(cfg), stepper, systems.m, systems.x, systems.v, V.default_steps(cfg))
        covered = T.numpy() / systems.period
        assert np.isfinite(systems.period).all() and covered.min() >= 1.0
        _, T, _ = rollout(build_model(cfg), stepper, systems.m, systems.x, systems.v, cfg.train.passage_steps)
        assert (T.numpy() / systems.period).min() < 0.5


def test_blend_config_is_the_generalist_with_its_documented_changes():
    """configs/generalist_blend.yaml is generalist.yaml with the blend timescale and 1800-step rollouts, compiled
    (and its own run name): the two shipped rules differ in what RESULTS compares them on, nothing else."""
    from aits import Config

    from helpers import config_changes

    blend = Config.load("configs/generalist_blend.yaml").to_dict()
    changed = config_changes("configs/generalist.yaml", "configs/generalist_blend.yaml")
    assert changed == {("run", "name"), ("features", "timescale"), ("train", "passage_steps"),
                       ("train", "compile_rollout")}
    assert (blend["features"]["timescale"], blend["train"]["passage_steps"]) == ("blend", 1800)
    assert blend["train"]["compile_rollout"] is True


def test_apsis_config_is_the_blend_config_with_apsis_rollouts():
    """configs/generalist_apsis.yaml is generalist_blend.yaml with every passage rollout from an apsis draw."""
    from aits import Config
    from helpers import config_changes

    changed = config_changes("configs/generalist_blend.yaml", "configs/generalist_apsis.yaml")
    apsis = Config.load("configs/generalist_apsis.yaml").to_dict()
    assert changed == {("run", "name"), ("train", "passage_apsis")} and apsis["train"]["passage_apsis"] == 1.0


@pytest.mark.parametrize("name", ["generalist_apsis", "generalist_apsis_orbits", "generalist_anchored",
                                  "generalist_phase"])
def test_a_run_with_apsis_rollouts_trains_and_validates(tmp_path, name):
    """train.passage_apsis 1 in a short run of the recommended shape (every family's rollouts from apsis draws,
    or the orbit families' only, found by the collected samples' families): every epoch's passage step is
    applied with a finite loss, and validation judges the run on its own (apsis) set."""
    from driver.train import main
    from helpers import rows

    sets = ["train.compile_rollout=false", "model.hidden_dims=[8, 8]", "train.passage_steps=20",
            "train.passage_batch=4", "train.passage_apsis=1", "train.epochs=2", "train.steps_per_epoch=2",
            "ray.inprocess=true", "ray.systems_per_collector=8", "wandb.mode=disabled", "run.checkpoint_interval=1",
            f"run.output_dir={tmp_path}", "run.name=apsis"]
    assert main(["--config", f"configs/{name}.yaml"] + [a for s in sets for a in ("--set", s)]) == 0
    run = tmp_path / "apsis"
    assert all(r["passage/applied"] == 1.0 and math.isfinite(r["passage/loss"]) for r in rows(run))
    if name == "generalist_phase":  # the phase term was computed every epoch: a position error, not a default 0
        assert all(0 < r["passage/phase_error"] < 1 and math.isfinite(r["passage/phase"]) for r in rows(run))
    assert V.main([str(run), "--systems", "8", "--steps", "20"]) == 0
    best = load_checkpoint(run / "model" / "model_best.pt")
    doc = json.loads((run / "selection.json").read_text())
    states = V.validation_states(Config.from_dict(best["config"]), 8)
    again, _ = V.validation_loss(best, Config.from_dict(best["config"]), states, 20)
    assert again == doc["epochs"][str(doc["best_epoch"])]["loss"]
    plain, _ = V.validation_loss(best, Config.from_dict(best["config"]), V.validation_states(CFG, 8), 20)
    assert plain != again


def test_a_softened_mixture_trains_and_validates_with_each_systems_own_softening(tmp_path):
    """soft_few_body in the mixture: a short run (collect, generalize, passage) ends with finite weights, and
    validation rolls every system out with its own softening, so the range box spans the softening feature
    eps / (r + eps) (index 6), which a run of unsoftened families pins at 0."""
    from driver.train import main

    sets = ["system.ic=mixture", "system.num_particles=4", "system.dim=3",
            "system.mixture={binary: 1, triple: 1, soft_few_body: 2}", "train.compile_rollout=false",
            "features.timescale=blend", "model.hidden_dims=[8, 8]", "model.output=factor", "model.init_factor=0.01",
            "model.max_modulation=3.0", "model.recursive=true", "model.recursion_clip=1.2", "train.passage=true",
            "train.passage_steps=20", "train.passage_batch=4", "train.epochs=2", "train.steps_per_epoch=2",
            "ray.inprocess=true", "ray.systems_per_collector=8", "wandb.mode=disabled", "run.checkpoint_interval=1",
            f"run.output_dir={tmp_path}", "run.name=soft"]
    assert main(["--config", "configs/generalist_blend.yaml"] + [a for s in sets for a in ("--set", s)]) == 0
    run = tmp_path / "soft"
    assert V.main([str(run), "--systems", "12", "--steps", "20"]) == 0
    best = load_checkpoint(run / "model" / "model_best.pt")
    lo, hi = best["feature_ranges"]["lo"], best["feature_ranges"]["hi"]
    assert lo[6] == 0.0 and hi[6] > 0.05  # unsoftened and softened systems both seen
    states = V.validation_states(Config.from_dict(best["config"]), 12)
    assert (states[3] > 0).sum() >= 3 and (states[3] == 0).sum() >= 3
    unsoftened = V.validation_states(CFG, 12)
    assert (unsoftened[3] == 0).all()


def test_a_hinge_run_is_judged_with_its_hinge():
    """A run trained with train.passage_hinge is validated on the objective it trained: the mean objective plus
    hinge x the mean excess over the classical rule; the untrained rule, at eta0, has no excess."""
    hinged = Config.from_dict({**CFG.to_dict(), "train": {**CFG.to_dict()["train"], "passage_hinge": 4.0}})
    states, steps = V.validation_states(CFG, 6), 200
    torch.manual_seed(1)
    swinging = build_model(CFG)
    with torch.no_grad():
        for p in swinging.parameters():
            p.add_(0.5 * torch.randn_like(p))
    flat = build_model(CFG)
    with torch.no_grad():
        flat.net[-1].weight.zero_()
    for model, excess in ((swinging, True), (flat, False)):
        ckpt = build_payload(10, model.state_dict(), None, CFG, NormScales().to_dict())
        plain, _ = V.validation_loss(ckpt, CFG, states, steps)
        with_hinge, _ = V.validation_loss(ckpt, hinged, states, steps)
        assert (with_hinge > plain + 1e-3) if excess else (with_hinge == plain)


def test_a_phase_run_is_judged_with_its_phase_term():
    """A run trained with train.passage_phase is validated with it: the plain loss plus the weight x the mean over
    the finite rollouts of the phase rows, here recomputed from the rollouts' own ends and references."""
    from aits.passage import phase_rows, reference_ends, rollout
    phased = Config.from_dict(CFG.to_dict(), ["train.passage_phase=0.5"])
    states, steps = V.validation_states(CFG, 6), 200
    model = perturbed_model(CFG)
    ckpt = build_payload(10, model.state_dict(), None, CFG, NormScales().to_dict())
    plain, _ = V.validation_loss(ckpt, CFG, states, steps)
    with_phase, _ = V.validation_loss(ckpt, phased, states, steps)
    m, x, v, eps = states
    stepper = V.Stepper(phased, NormScales())
    with torch.no_grad():
        _, T, tau0, x_end = rollout(model, stepper, m, x, v, steps, eps=eps, with_end=True)
        ref = reference_ends(stepper, m, x, v, T, phased.model.init_factor / 4, 100_000, eps)
        rows = phase_rows(x_end, *ref, torch.as_tensor(m), torch.as_tensor(x), T, tau0)
    assert bool(torch.isfinite(rows).all())
    assert with_phase - plain == pytest.approx(0.5 * float(rows.mean()), rel=1e-9)


def test_apsis_orbits_config_is_the_apsis_config_for_the_orbit_families():
    """configs/generalist_apsis_orbits.yaml is generalist_apsis.yaml with the apsis starts for the orbit
    families only: the few-body family's rollouts start from accepted states."""
    from aits import Config

    from helpers import config_changes

    orbits = Config.load("configs/generalist_apsis_orbits.yaml").to_dict()
    changed = config_changes("configs/generalist_apsis.yaml", "configs/generalist_apsis_orbits.yaml")
    assert changed == {("run", "name"), ("train", "passage_apsis_families")}
    assert orbits["train"]["passage_apsis_families"] == ["binary", "triple", "planets"]


def test_family_aware_validation_moves_only_the_named_families():
    """train.passage_apsis_families: only the validation systems of those families are redrawn at an apsis
    (from their own streams: the same family and first pair); the few-body systems are the plain set's."""
    from aits.families import FAMILIES

    n = 24
    plain_cfg = Config.from_dict(CFG.to_dict(), ["system.mixture={binary: 1, few_body: 1}"])
    plain = V.validation_states(plain_cfg, n)
    moved = V.validation_states(Config.from_dict(plain_cfg.to_dict(), [
        "train.passage_apsis=1", "train.passage_apsis_families=[binary]"]), n)
    family = V.drawn_systems(plain_cfg, n).family
    few, binary = family == FAMILIES.index("few_body"), family == FAMILIES.index("binary")
    assert few.any() and binary.any()
    assert all(np.array_equal(p[few], q[few]) for p, q in zip(plain, moved))
    assert np.array_equal(plain[0][binary], moved[0][binary])  # same masses: the same draws, at another phase
    rel_x = moved[1][binary, 1] - moved[1][binary, 0]
    rel_v = moved[2][binary, 1] - moved[2][binary, 0]
    rv = np.einsum("bd,bd->b", rel_x, rel_v) / (np.linalg.norm(rel_x, axis=1) * np.linalg.norm(rel_v, axis=1))
    assert np.abs(rv).max() < 1e-9 and not np.array_equal(plain[1][binary], moved[1][binary])


def test_a_family_weighted_run_is_judged_with_its_weights():
    """train.passage_family_weights: the validation loss is the weighted mean, as in training: weight 0 on
    every family but few_body gives the plain loss of the few-body systems alone; without the systems'
    families it is refused in one line."""
    from aits.families import FAMILIES

    n, steps = 12, 60
    cfg = Config.from_dict(CFG.to_dict(), ["system.mixture={binary: 1, few_body: 1}"])
    states, family = V.validation_states(cfg, n), V.drawn_systems(cfg, n).family
    few = family == FAMILIES.index("few_body")
    assert 0 < few.sum() < n
    torch.manual_seed(2)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ckpt = build_payload(10, model.state_dict(), None, cfg, NormScales().to_dict())
    only_few = Config.from_dict(cfg.to_dict(), ["train.passage_family_weights={binary: 0}"])
    weighted, _ = V.validation_loss(ckpt, only_few, states, steps, family=family)
    alone, _ = V.validation_loss(ckpt, cfg, tuple(a[few] for a in states), steps)
    everything, _ = V.validation_loss(ckpt, cfg, states, steps)
    assert weighted == pytest.approx(alone, rel=1e-9) and abs(weighted - everything) > 1e-3
    with pytest.raises(ValueError, match="train.passage_family_weights: the start states carry no family"):
        V.validation_loss(ckpt, only_few, states, steps)


def test_anchored_config_is_the_apsis_orbits_config_with_each_rollouts_level_anchored():
    from aits import Config

    from helpers import config_changes

    anchored = Config.load("configs/generalist_anchored.yaml").to_dict()
    changed = config_changes("configs/generalist_apsis_orbits.yaml", "configs/generalist_anchored.yaml")
    assert changed == {("run", "name"), ("train", "passage_anchor_rows")}
    assert anchored["train"]["passage_anchor_rows"] is True and anchored["train"]["passage_anchor"] > 0


def test_phase_config_is_the_anchored_config_with_the_phase_term():
    from aits import Config
    from helpers import config_changes

    phase = Config.load("configs/generalist_phase.yaml").to_dict()
    changed = config_changes("configs/generalist_phase.yaml", "configs/generalist_anchored.yaml")
    assert changed == {("run", "name"), ("train", "passage_phase")} and phase["train"]["passage_phase"] == 1.0

"""Bad input to the CLIs, one table: a non-zero exit (or the documented fallback), one line on stderr
naming the problem, and nothing written."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from driver.train import main

from helpers import write_config

ROOT = Path(__file__).resolve().parents[1]
TRAIN, EVALUATE = str(ROOT / "driver" / "train.py"), str(ROOT / "driver" / "evaluate.py")
INPROC = "driver.train.main in this process"  # errors found before anything starts: no interpreter start-up
# Spawned (the real command line): argparse's own errors, one error of each config stage (unknown key,
# invalid YAML), the evaluate CLI, and the two fallbacks that go on to train.

# (case, CLI, arguments; {cfg}, {tmp}, {ckpt} are filled in, expected exit, words the one stderr line holds)
CASES = [
    ("unknown key", TRAIN, "--config {cfg} --set train.lrr=1", 2, ["unknown key 'train.lrr'", "train.lr"]),
    ("wrong type", INPROC, "--config {cfg} --set train.epochs=abc", 2, ["train.epochs", "integer"]),
    ("zero threshold", INPROC, "--config {cfg} --set train.energy_threshold=0", 2,
     ["train.energy_threshold", "> 0"]),
    ("negative threshold", INPROC, "--config {cfg} --set train.energy_threshold=-1e-4", 2,
     ["train.energy_threshold", "-0.0001"]),
    ("E_upper above threshold", INPROC, "--config {cfg} --set train.E_upper=1e-3", 2,
     ["train.E_upper", "exceeds train.energy_threshold"]),
    ("delta_mag without history", INPROC,
     "--config {cfg} --set features.feature_type=delta_mag --set features.history_len=0", 2,
     ["delta_mag", "features.history_len >= 1"]),
    ("kepler with 3 bodies", INPROC, "--config {cfg} --set system.num_particles=3", 2,
     ["system.num_particles", "kepler needs exactly 2"]),
    ("eccentricity 1", INPROC, "--config {cfg} --set system.e_max=1.0", 2, ["system.e_max", "[0, 1)"]),
    ("missing IC file", INPROC, "--config {cfg} --set system.ic=file --set system.ic_path={tmp}/nope.txt", 2,
     ["system.ic_path", "nope.txt", "not found"]),
    ("malformed IC file", INPROC, "--config {cfg} --set system.ic=file --set system.ic_path={tmp}/bad_ic.txt", 2,
     ["system.ic_path", "bad_ic.txt", "cannot parse"]),
    ("unknown feature type", INPROC, "--config {cfg} --set features.feature_type=fancy", 2,
     ["features.feature_type", "'fancy'", "basic, rich, delta_mag"]),
    ("invalid YAML", TRAIN, "--config {tmp}/broken.yaml", 2, ["broken.yaml", "invalid YAML"]),
    ("missing config file", INPROC, "--config {tmp}/absent.yaml", 2, ["absent.yaml", "not found"]),
    ("no --config", TRAIN, "--set train.epochs=2", 2, ["--config", "required"]),
    ("unknown option", TRAIN, "--config {cfg} --epochs 3", 2, ["unrecognized arguments", "--epochs"]),
    ("corrupt checkpoint", INPROC, "--resume {tmp}/corrupt.pt", 2, ["corrupt.pt", "corrupt"]),
    ("resume missing checkpoint", INPROC, "--config {cfg} --resume {tmp}/gone.pt", 2, ["gone.pt", "not found"]),
    ("resume a non-training checkpoint", INPROC, "--config {cfg} --resume {tmp}/weights_only.pt", 2,
     ["weights_only.pt", "not a training checkpoint", "extra.collectors"]),
    ("unwritable output dir", INPROC, "--config {cfg} --set run.output_dir={tmp}/afile/runs", 2,
     ["run.output_dir", "afile", "cannot create"]),
    ("evaluate: corrupt checkpoint", EVALUATE, "--checkpoint {tmp}/corrupt.pt --out {tmp}/sim", 2,
     ["corrupt.pt", "corrupt"]),
    ("evaluate: missing checkpoint", EVALUATE, "--checkpoint {tmp}/gone.pt --out {tmp}/sim", 2,
     ["gone.pt", "not found"]),
    ("evaluate: checkpoint of another program", EVALUATE, "--checkpoint {tmp}/other.pt --out {tmp}/sim", 2,
     ["other.pt", "missing keys"]),
    ("evaluate: unknown suite", EVALUATE, "--checkpoint {ckpt} --suite huge --out {tmp}/sim", 2,
     ["--suite", "invalid choice", "'huge'"]),
    # every spelling of a non-finite or huge number, from --set and from YAML
    ("nan", INPROC, "--config {cfg} --set train.lr=nan", 2, ["train.lr", "finite", "nan"]),
    (".nan", INPROC, "--config {cfg} --set system.softening=.nan", 2, ["system.softening", "finite"]),
    ("inf", INPROC, "--config {cfg} --set run.duration=inf", 2, ["run.duration", "finite", "inf"]),
    (".inf", INPROC, "--config {cfg} --set train.energy_threshold=.inf", 2, ["train.energy_threshold", "finite"]),
    ("-.inf", INPROC, "--config {cfg} --set train.weight_decay=-.inf", 2, ["train.weight_decay", "finite", "-inf"]),
    ("1e999", INPROC, "--config {cfg} --set system.e_max=1e999", 2, ["system.e_max", "finite"]),
    ("1e999 for an integer", INPROC, "--config {cfg} --set train.epochs=1e999", 2, ["train.epochs", "integer"]),
    ("huge integer", INPROC, "--config {cfg} --set train.epochs=" + "1" + "0" * 30, 2,
     ["train.epochs", "<= 1000000000", "1" + "0" * 30]),
    ("huge integer seed", INPROC, "--config {cfg} --set run.seed=" + "9" * 25, 2, ["run.seed", "<= 2147483647"]),
    ("huge integer for a float", INPROC, "--config {cfg} --set train.lr=" + "9" * 400, 2, ["train.lr", "finite"]),
    ("huge list value", INPROC, "--config {cfg} --set model.hidden_dims=16," + "1" + "0" * 20, 2,
     ["model.hidden_dims", "every value must be <= 65536"]),
    (".nan in a YAML file", INPROC, "--config {tmp}/nan.yaml", 2, ["train.E_lower", "finite"]),
    (".inf in a YAML list", INPROC, "--config {tmp}/inf_mass.yaml", 2, ["system.mass", "finite"]),
    # files that are not readable text
    ("binary config file", INPROC, "--config {tmp}/garbage.yaml", 2, ["garbage.yaml", "not a text file"]),
    ("config is a directory", INPROC, "--config {tmp}/adir", 2, ["adir", "is a directory"]),
    ("binary IC file", INPROC, "--config {cfg} --set system.ic=file --set system.ic_path={tmp}/garbage_ic.txt", 2,
     ["system.ic_path", "garbage_ic.txt", "not a text file"]),
    ("IC path is a directory", INPROC, "--config {cfg} --set system.ic=file --set system.ic_path={tmp}/adir", 2,
     ["system.ic_path", "adir", "is a directory"]),
    # initial conditions the physics cannot start from
    ("coincident bodies", INPROC, "--config {cfg} --set system.ic=file --set system.ic_path={tmp}/coincident.txt", 2,
     ["system.ic_path", "coincident.txt", "bodies 0 and 1 coincide"]),
    ("zero total energy", INPROC, "--config {cfg} --set system.ic=file --set system.ic_path={tmp}/zero_energy.txt",
     2, ["system.ic_path", "zero_energy.txt", "total energy"]),
    ("NaN in an IC file", INPROC, "--config {cfg} --set system.ic=file --set system.ic_path={tmp}/nan_ic.txt", 2,
     ["system.ic_path", "nan_ic.txt", "finite"]),
    # checkpoints from another program or an older layout
    ("checkpoint of another program", INPROC, "--config {cfg} --resume {tmp}/other.pt", 2,
     ["other.pt", "missing keys"]),
    ("checkpoint that is a tensor", INPROC, "--config {cfg} --resume {tmp}/tensor.pt", 2,
     ["tensor.pt", "not a checkpoint dictionary"]),
    ("checkpoint of an older layout", INPROC, "--config {cfg} --resume {tmp}/old_layout.pt", 2,
     ["old_layout.pt", "does not fit this version"]),
    ("checkpoint of another model", INPROC, "--config {cfg} --set model.hidden_dims=8,8 --resume {ckpt}", 2,
     ["model_epoch_0001.pt", "does not fit", "size mismatch"]),
    ("checkpoint with another collector count", INPROC, "--config {cfg} --set ray.num_collectors=3 --resume {ckpt}", 2,
     ["ray.num_collectors", "checkpoint has 2 collectors, config 3"]),
    # documented fallbacks: exit 0
    ("wandb online without credentials", TRAIN, "--config {cfg} --set wandb.mode=online", 0,
     ["warning: wandb.mode=online", "offline"]),
    ("resume auto without checkpoint", TRAIN, "--config {cfg} --resume auto", 0, []),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("bad")
    cfg = write_config(tmp, name="good", ray={"inprocess": True}, train={"epochs": 1})
    assert main(["--config", cfg]) == 0
    ckpt = tmp / "runs" / "good" / "model" / "model_epoch_0001.pt"
    (tmp / "bad_ic.txt").write_text("1.0 0 0 0 0\n1.0 1 oops 0 1\n")
    (tmp / "broken.yaml").write_text("train: [1, 2\n")
    (tmp / "corrupt.pt").write_bytes(ckpt.read_bytes()[:5000])
    torch.save({"epoch": 1, "model_state_dict": {}, "config": {}}, tmp / "weights_only.pt")
    (tmp / "afile").write_text("a file where the output folder should go\n")
    good = yaml.safe_load(Path(cfg).read_text())
    good["run"]["name"] = "from_yaml"  # must never be created
    good["train"]["E_lower"] = float("nan")  # written as .nan
    (tmp / "nan.yaml").write_text(yaml.safe_dump(good))
    del good["train"]["E_lower"]
    (tmp / "inf_mass.yaml").write_text(yaml.safe_dump(good) + "system:\n  mass: [1.0, .inf]\n")
    (tmp / "garbage.yaml").write_bytes(bytes(range(256)) * 4)
    (tmp / "garbage_ic.txt").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)))
    (tmp / "adir").mkdir()
    (tmp / "coincident.txt").write_text("1 0.5 0 0 0.3\n1 0.5 0 0 -0.3\n")
    v = 0.5 ** 0.5  # kinetic 1/2 = -potential (masses 1 at distance 2)
    (tmp / "zero_energy.txt").write_text(f"1 -1 0 0 {v!r}\n1 1 0 0 {-v!r}\n")
    (tmp / "nan_ic.txt").write_text("1 0 0 0 0.5\n1 1 nan 0 -0.5\n")
    torch.save({"state": {"w": torch.zeros(2)}, "step": 7}, tmp / "other.pt")
    torch.save(torch.zeros(3), tmp / "tensor.pt")
    old = torch.load(ckpt, weights_only=False)
    old["extra"]["collectors"][0] = {"index": 0, "orbit": {"x": [[0.0, 0.0]]}, "torch_rng": torch.zeros(1)}
    torch.save(old, tmp / "old_layout.pt")
    return {"tmp": tmp, "ckpt": ckpt}


def run_case(case, inputs) -> tuple:
    name, script, args, _, _ = case
    tmp = inputs["tmp"]
    # each case has its own run name, so "nothing written" is checked per case
    run = "case_" + "".join(ch if ch.isalnum() else "_" for ch in name)
    cfg = write_config(tmp, name=run, ray={"inprocess": True}, train={"epochs": 1})
    argv = [a.format(cfg=cfg, tmp=tmp, ckpt=inputs["ckpt"]) for a in args.split()]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "RAY_ADDRESS"))}
    env.update(HOME=str(tmp / "home"), NETRC=str(tmp / "home" / "no_netrc"), PYTHONPATH=str(ROOT))
    if script == INPROC:  # only from the main thread: stdout and stderr are redirected
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue()), tmp / "runs" / run
    proc = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, env=env, cwd=tmp,
                          timeout=120)
    return proc, tmp / "runs" / run


def test_bad_input_table(inputs):
    with ThreadPoolExecutor(max_workers=3) as pool:
        spawned = pool.map(lambda c: run_case(c, inputs), [c for c in CASES if c[1] != INPROC])
        here = {c[0]: run_case(c, inputs) for c in CASES if c[1] == INPROC}
        spawned = iter(list(spawned))
        results = [here[c[0]] if c[1] == INPROC else next(spawned) for c in CASES]
    assert len(CASES) >= 15
    for case, (proc, run_dir) in zip(CASES, results):
        name, _, _, code, words = case
        assert proc.returncode == code, (name, proc.stderr)
        # the progress bar ("epochs:" segments) and W&B's own sync hints ("wandb:") are not our messages
        lines = [s for s in proc.stderr.replace("\r", "\n").splitlines()
                 if s.strip() and not s.startswith(("epochs:", "wandb:"))]
        assert len(lines) == (1 if words else 0), (name, lines)
        for w in words:
            assert w in lines[0], (name, w, lines[0])
        if code:
            assert lines[0].startswith(("error: ", "evaluate: error: ")), (name, lines[0])
            assert not proc.stdout.strip(), (name, proc.stdout)
            assert not run_dir.exists(), name  # nothing written
            assert not (inputs["tmp"] / "sim").exists(), name
    assert not (inputs["tmp"] / "runs" / "from_yaml").exists()
    # the fallbacks did their documented thing
    by_name = {c[0]: r for c, r in zip(CASES, results)}
    proc, run_dir = by_name["wandb online without credentials"]
    assert "Training complete: 1 epochs" in proc.stdout
    assert len(list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
    proc, run_dir = by_name["resume auto without checkpoint"]
    assert "starting afresh" in proc.stdout and "Training complete: 1 epochs" in proc.stdout
    assert (run_dir / "model" / "model_epoch_0001.pt").is_file()

"""Multi-node Ray on one machine (``ray.cluster_utils.Cluster``: a head without CPUs and two worker
nodes with 2 CPUs each, separate raylets): collectors spread over the nodes (SPREAD), a collector's
node removed mid-epoch, the learner killed, a short soak with both. Each run ends with the weights
of a clean run.

The cluster is started once for this module. The session's local Ray (tests/conftest.py), if this
session started it already, is shut down for the module and started again afterwards.
"""
from __future__ import annotations

import logging

import pytest

from aits import Config
from driver.soak import add_worker, kill_later, node_of, remove_node_of, soak, start_cluster, stop_cluster
from driver.train import main, train

from helpers import assert_same_weights, final_weights, rows, write_config

RUN = dict(train={"epochs": 4}, run={"checkpoint_interval": 1})


@pytest.fixture(scope="module")
def cluster():
    import ray

    had_session_ray = ray.is_initialized()
    if had_session_ray:
        ray.shutdown()
    c = start_cluster(workers=2, cpus=2)
    yield c
    stop_cluster(c)
    if had_session_ray:  # as tests/conftest.py's ray_session started it (a new local one)
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Final weights of the module's run config, in-process without faults, plain and pipelined."""
    tmp = tmp_path_factory.mktemp("clean")
    out = {}
    for pipeline in (False, True):
        name = f"clean_{pipeline}"
        cfg = write_config(tmp, name=name, **RUN, ray={"inprocess": True, "pipeline": pipeline})
        assert main(["--config", cfg]) == 0
        out[pipeline] = final_weights(tmp / "runs" / name)
    return out


def ensure_two_workers(cluster) -> None:
    """Put back a worker node a test removed."""
    while len(cluster.worker_nodes) < 2:
        add_worker(cluster, cpus=2)


@pytest.mark.parametrize("pipeline", [False, True], ids=["plain", "pipeline"])
def test_node_removed_mid_epoch_run_completes_with_clean_weights(cluster, clean, tmp_path, pipeline):
    ensure_two_workers(cluster)
    cfg = Config.load(write_config(tmp_path, name="node", **RUN, ray={"pipeline": pipeline}))
    nodes, timers = [], []

    def on_epoch(epoch, row, backend, learner, collectors):
        if epoch == 1:
            nodes.extend(node_of(c) for c in collectors)
            timers.append(remove_node_of(cluster, collectors[1], delay=0.05))  # during epoch 2

    assert train(cfg, None, on_epoch=on_epoch) == 0
    timers[0].join()
    worker_ids = {n.node_id for n in cluster.worker_nodes} | {nodes[1]}
    assert len(set(nodes)) == 2 and set(nodes) <= worker_ids  # SPREAD: one collector per worker node
    assert len(cluster.worker_nodes) == 1  # the node is gone
    metrics = rows(tmp_path / "runs" / "node")
    assert [r["epoch"] for r in metrics] == [1, 2, 3, 4]
    # the lost collector is replaced (or, when the learner shared its node, the learner rebuilt)
    assert sum(r["system/collector_restarts"] + r["system/learner_restarts"] for r in metrics) >= 1
    assert_same_weights(final_weights(tmp_path / "runs" / "node"), clean[pipeline])


def test_learner_killed_on_cluster_is_rebuilt_with_clean_weights(cluster, clean, tmp_path):
    ensure_two_workers(cluster)
    cfg = Config.load(write_config(tmp_path, name="learner", **RUN))
    timers = []

    def on_epoch(epoch, row, backend, learner, collectors):
        if epoch == 2 and not timers:
            timers.append(kill_later(backend, learner, delay=0.05))

    assert train(cfg, None, on_epoch=on_epoch) == 0
    timers[0].join()
    metrics = rows(tmp_path / "runs" / "learner")
    assert [r["epoch"] for r in metrics] == [1, 2, 3, 4]
    assert sum(r["system/learner_restarts"] for r in metrics) == 1
    assert_same_weights(final_weights(tmp_path / "runs" / "learner"), clean[False])


def test_short_soak_with_node_removal_and_learner_kill(cluster, tmp_path):
    ensure_two_workers(cluster)
    report = soak(epochs=28, warmup=6, output_dir=str(tmp_path), cluster=cluster, remove_node_at=8,
                  kill_learner_at=13)  # killed in epoch 14: rebuilt from checkpoint 10 (the soak saves every 10)
    assert report["learner_restarts"] >= 1  # 2 when the learner was on the removed node
    assert {r["role"] for r in report["replaced"]} >= {"learner", "collector 1"}
    assert set(report["processes"]) == {"driver", "learner", "collector 0", "collector 1"}
    for name, m in report["processes"].items():
        assert m["growth_mb"] < 25, (name, m)
    assert [r["epoch"] for r in rows(tmp_path / "soak")] == list(range(1, 29))

"""The sample's path (driver/sample_path.py): a traced one-epoch in-process training."""
from driver import sample_path


def test_an_accepted_sample_passes_through_at_most_25_functions():
    path = sample_path.measure()
    # the trace follows the sample from the collector's batch through collect and generalize to the update
    for name in ("Collector.collect", "Systems.batch", "Stepper.prepare", "Stepper.attempt", "DtModel.forward",
                 "Systems.write_samples", "Learner.step", "generalize.generalize_on_trajectory",
                 "stepper.optimizer_step"):
        assert name in path, name
    assert path.index("Systems.batch") < path.index("Learner.step") < path.index("stepper.optimizer_step")
    assert "Systems.advance" not in path  # the state after the step is another sample's
    assert len(path) <= sample_path.LIMIT, path

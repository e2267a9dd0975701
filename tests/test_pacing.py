"""Training pace: additive increase while staging waits for the stream, halving when it does not."""

from mpi4py import MPI

from stagelearn.staging.pacing import TrainingPace


def test_aimd_follows_the_stream():
    pace = TrainingPace(10)
    assert pace.update(MPI.COMM_SELF, wait_s=0.0, busy_s=1.0) == 5  # step was already queued: halve
    assert pace.update(MPI.COMM_SELF, wait_s=0.0, busy_s=1.0) == 2
    assert pace.update(MPI.COMM_SELF, wait_s=0.0, busy_s=1.0) == 1
    assert pace.update(MPI.COMM_SELF, wait_s=0.0, busy_s=1.0) == 1  # never below one
    assert pace.update(MPI.COMM_SELF, wait_s=0.5, busy_s=1.0) == 2  # waited: one more
    for _ in range(20):
        pace.update(MPI.COMM_SELF, wait_s=0.5, busy_s=1.0)
    assert pace.iterations == 10  # capped at the configured maximum
    assert pace.history[:5] == [10, 5, 2, 1, 1]


def test_fixed_pace():
    pace = TrainingPace(7, adaptive=False)
    assert pace.update(MPI.COMM_SELF, wait_s=0.0, busy_s=9.0) == 7

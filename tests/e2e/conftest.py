"""The e2e tier's fixtures: the trainers kwok pretends to run answer the operator's /status."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgeadapt.devcluster import LocalCluster
from edgeadapt.devcluster.testing import SimulatedTrainers


@pytest.fixture(scope="session")
def simulated_trainers(local_cluster: LocalCluster) -> Iterator[SimulatedTrainers]:
    sim = SimulatedTrainers(local_cluster, refresh=1.0).start()
    try:
        yield sim
    finally:
        sim.stop()

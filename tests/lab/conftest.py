"""Lab fixtures: a fresh TwoNodeLab per test, removed even when the test fails."""
from __future__ import annotations

import pytest

from hanet import labnet


@pytest.fixture
def lab():
    """Namespaces a and b joined by a.nic1<->b.nic2 (primary) and a.nic3<->b.nic4 (alternate)."""
    two = labnet.TwoNodeLab.create("lab")
    try:
        yield two
    finally:
        two.close()

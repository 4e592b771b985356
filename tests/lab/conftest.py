"""Lab fixtures: a fresh TwoNodeLab per test, removed even when the test fails."""
from __future__ import annotations

import os

import pytest

from hanet import lab as labmod
from hanet import labnet, replay


@pytest.fixture
def lab():
    """Namespaces a and b joined by a.nic1<->b.nic2 (primary) and a.nic3<->b.nic4 (alternate)."""
    two = labnet.TwoNodeLab.create("lab")
    try:
        yield two
    finally:
        two.close()


@pytest.fixture
def make_lab(tmp_path):
    """Daemon labs made by the test, stopped, checked with `replay --verify` and removed."""
    labs: list[labmod.Lab] = []

    def make(start: bool = True, **kwargs) -> labmod.Lab:
        lab = labmod.Lab.create(str(tmp_path / f"lab{len(labs)}"), **kwargs)
        labs.append(lab)
        if start:
            lab.start_daemons()
        return lab

    yield make
    failures = []
    for lab in labs:
        try:
            lab.stop_daemons()
            logs = [lab.log_path(n) for n in ("alpha", "beta") if os.path.exists(lab.log_path(n))]
            if logs and replay.main([*logs, "--verify"]) != 0:
                failures.append(f"replay --verify failed on {logs}")
        finally:
            lab.destroy()
    assert not failures, failures

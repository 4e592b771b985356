"""The checked-in golden log: it still reads, replays and verifies as recorded, and the current
writer and machine still write it byte for byte (tests/golden/golden_log.py says how to renew it
after a deliberate change of the format or of the machine's decisions)."""
from __future__ import annotations

import golden_log
from hanet import replay


def test_the_golden_log_replays_as_recorded():
    with open(golden_log.TIMELINE) as fh:
        assert golden_log.timeline(golden_log.LOG) == fh.read()
    assert replay.main([golden_log.LOG, "--verify"]) == replay.EXIT_OK


def test_the_current_code_writes_the_golden_log(tmp_path):
    fresh = str(tmp_path / "failover.hlog")
    golden_log.write(fresh)
    with open(fresh, "rb") as new, open(golden_log.LOG, "rb") as old:
        assert new.read() == old.read(), "the log format or the machine changed: see tests/golden/golden_log.py"


def test_a_log_written_before_a_field_was_added_still_verifies():
    """Written when notices did not yet carry ``seen``: the record's own fields are compared."""
    import os
    older = os.path.join(os.path.dirname(golden_log.LOG), "older", "failover-no-seen.hlog")
    assert replay.main([older, "--verify"]) == replay.EXIT_OK

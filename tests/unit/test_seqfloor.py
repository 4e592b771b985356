"""The first heartbeat sequence number of a run never goes below an earlier run's."""
from __future__ import annotations

import logging

from hanet import seqfloor

NOW = 1_800_000_000 * 10**9  # a wall clock in ns


def test_first_start_takes_the_wall_clock_and_records_its_block(tmp_path):
    path = str(tmp_path / "events.hlog.seq")
    assert seqfloor.reserve(path, NOW) == NOW
    assert seqfloor.read_floor(path) == NOW + seqfloor.BLOCK


def test_a_start_after_the_clock_stepped_back_begins_above_the_last_block(tmp_path):
    path = str(tmp_path / "events.hlog.seq")
    first = seqfloor.reserve(path, NOW)
    second = seqfloor.reserve(path, NOW - 3600 * 10**9)
    assert second == first + seqfloor.BLOCK
    # Whatever the first run sent (fewer than BLOCK frames) is below the second run's start.
    assert seqfloor.reserve(path, NOW + 10**9) == second + seqfloor.BLOCK


def test_a_clock_ahead_of_the_floor_wins(tmp_path):
    path = str(tmp_path / "events.hlog.seq")
    seqfloor.reserve(path, NOW)
    later = NOW + 10 * seqfloor.BLOCK
    assert seqfloor.reserve(path, later) == later


def test_damaged_file_falls_back_to_the_wall_clock_and_is_rewritten(tmp_path, caplog):
    path = tmp_path / "events.hlog.seq"
    path.write_text("12ab\n")
    with caplog.at_level(logging.WARNING, logger="hanet"):
        assert seqfloor.reserve(str(path), NOW) == NOW
    assert "seqfloor damaged" in caplog.text and str(path) in caplog.text
    assert seqfloor.read_floor(str(path)) == NOW + seqfloor.BLOCK


def test_unwritable_place_is_logged_not_raised(tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    path = str(blocker / "events.hlog.seq")  # its parent is a file: every write fails
    with caplog.at_level(logging.ERROR, logger="hanet"):
        assert seqfloor.reserve(path, NOW) == NOW
    assert "seqfloor not saved" in caplog.text


def test_missing_parent_directory_is_created(tmp_path):
    path = str(tmp_path / "var" / "lib" / "hanet" / "events.hlog.seq")
    seqfloor.reserve(path, NOW)
    assert seqfloor.read_floor(path) == NOW + seqfloor.BLOCK


def test_a_floor_at_the_end_of_the_space_is_set_aside_not_reused_by_every_run(tmp_path, caplog):
    path = tmp_path / "events.hlog.seq"
    path.write_text(f"{seqfloor.MAX_SEQ - 10}\n")
    with caplog.at_level(logging.ERROR, logger="hanet"):
        first = seqfloor.reserve(str(path), NOW)
    assert first == NOW and "seqfloor damaged" in caplog.text
    second = seqfloor.reserve(str(path), NOW)  # the wall clock did not move: the floor did
    assert second == NOW + seqfloor.BLOCK > first

"""LinkWatch's bookkeeping of hanet's own address removals stays bounded."""
from __future__ import annotations

import pathlib
import time

from hanet import config
from hanet.linkwatch import LinkWatch

EXAMPLE = (pathlib.Path(__file__).resolve().parents[2] / "conf" / "hanet.toml").read_text()


def test_unconsumed_expected_removals_expire_instead_of_piling_up(tmp_path):
    key = tmp_path / "heartbeat.key"
    key.write_text("0123456789abcdef" * 4 + "\n")
    key.chmod(0o600)
    cfg = config.parse(EXAMPLE.replace("/etc/hanet/heartbeat.key", str(key)))
    watch = LinkWatch(cfg)  # never started: no socket, only the bookkeeping
    addresses = ["192.0.2.1/24", "192.0.2.100/24"]
    for _ in range(1000):  # removals the kernel never reports back (a NIC that is not the holder)
        watch.expect_removals(1, addresses, window_ns=1)
        time.sleep(0.00001)
    watch.expect_removals(1, addresses)
    assert {key: len(deadlines) for key, deadlines in watch._expected.items()} == {
        (1, "192.0.2.1/24"): 1, (1, "192.0.2.100/24"): 1}
    # A live expectation is still honoured once, then spent.
    now = time.monotonic_ns()
    assert watch._expected_now(1, "192.0.2.1/24", now)
    assert not watch._expected_now(1, "192.0.2.1/24", now)

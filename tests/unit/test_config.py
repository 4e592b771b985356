"""Configuration: the example file is valid, and every kind of bad input names file, key and reason."""
from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

from hanet import config

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "conf" / "hanet.toml").read_text()


@pytest.fixture
def keyfile(tmp_path):
    path = tmp_path / "heartbeat.key"
    path.write_text("0123456789abcdef" * 4 + "\n")
    path.chmod(0o600)
    return path


def example(keyfile, **subs) -> str:
    text = EXAMPLE.replace("/etc/hanet/heartbeat.key", str(keyfile))
    for old, new in subs.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def test_example_file_is_valid_and_documents_every_key(keyfile):
    cfg = config.parse(example(keyfile), file="hanet.toml")
    assert cfg.node_id == "alpha" and cfg.peer_id == "beta"
    assert [p.interface for p in cfg.paths] == ["nic1", "nic3"]
    assert cfg.heartbeat.key.startswith(b"0123")
    assert cfg.identity.broadcast_address == "192.0.2.255"
    assert cfg.heartbeat.reply_timeout_ms == 0.0  # "auto"
    fixed = config.parse(example(keyfile, **{'reply_timeout_ms = "auto"': "reply_timeout_ms = 2"}))
    assert fixed.heartbeat.reply_timeout_ms == 2.0
    assert cfg.heartbeat.confirm_ms == 0.0  # off: BFD's rule
    on = config.parse(example(keyfile, **{"confirm_ms = 0 ": "confirm_ms = 5 "}))
    assert on.heartbeat.confirm_ms == 5.0
    # Every dataclass field appears as a key in the example (the key itself is read from key_file).
    keys = set(re.findall(r"^\s*([a-z_0-9]+)\s*=", EXAMPLE, re.M))
    for section in (config.HeartbeatConfig, config.LinkConfig, config.FailoverConfig, config.FailbackConfig,
                    config.DampingConfig, config.QualityConfig, config.IdentityConfig, config.EventLogConfig,
                    config.ControlConfig, config.MetricsConfig, config.PathConfig):
        for field in section.__dataclass_fields__:
            if field != "key":
                assert field in keys, f"{section.__name__}.{field} missing from conf/hanet.toml"


BAD = [
    ({"[node]\nid": "[node\nid"}, "(syntax)", "Expected"),
    ({'multiplier = 3 ': 'multiplyer = 3 '}, "heartbeat.multiplyer", "unknown key"),
    ({'multiplier = 3 ': 'multiplier = "3" '}, "heartbeat.multiplier", "must be int"),
    ({'multiplier = 3 ': 'multiplier = true '}, "heartbeat.multiplier", "must be int"),
    ({'multiplier = 3 ': 'multiplier = 0 '}, "heartbeat.multiplier", "out of range"),
    ({'interval_ms = 10.0': 'interval_ms = 0.01'}, "heartbeat.interval_ms", "out of range"),
    ({'reply_timeout_ms = "auto"': 'reply_timeout_ms = "soon"'}, "heartbeat.reply_timeout_ms", '"auto" or a number'),
    ({'reply_timeout_ms = "auto"': 'reply_timeout_ms = 20.0'}, "heartbeat.reply_timeout_ms", "longer than interval_ms"),
    ({'confirm_ms = 0 ': 'confirm_ms = "soon" '}, "heartbeat.confirm_ms", "must be int or float"),
    ({'confirm_ms = 0 ': 'confirm_ms = 20 '}, "heartbeat.confirm_ms", "longer than interval_ms"),
    ({'confirm_ms = 0 ': 'confirm_ms = -1 '}, "heartbeat.confirm_ms", "out of range"),
    ({'reply_timeout_ms = "auto"': 'reply_timeout_ms = 0'}, "heartbeat.reply_timeout_ms", "out of range"),
    ({'address = "192.0.2.1/24"': 'address = "192.0.2.300/24"'}, "identity.address", "192.0.2.300"),
    ({'address = "192.0.2.1/24"': 'address = "192.0.2.1"'}, "identity.address", "prefix"),
    ({'vips = ["192.0.2.100/24"]': 'vips = ["nope"]'}, "identity.vips[0]", "does not appear"),
    ({'mac = ""                    #': 'mac = "zz:00:00:00:00:00" #'}, "identity.mac", "not a MAC"),
    ({'policy = "auto"': 'policy = "sometimes"'}, "failback.policy", "must be one of"),
    ({'durability = "transition"': 'durability = "maybe"'}, "eventlog.durability", "must be one of"),
    ({'wait_ms = 20 ': 'wait_ms = -1 '}, "eventlog.wait_ms", "out of range"),
    ({'"routes"]': '"routes", "mtu"]'}, "failover.carry[6]", "must be one of"),
    ({'interface = "nic3"': 'interface = "nic1"'}, "path[1].interface", "used by path[0]"),
    ({'peer = "beta"': 'peer = "alpha"'}, "node.peer", "must differ"),
    ({'id = "alpha"': 'id = "a-very-long-node-identifier"'}, "node.id", "1 to 16 bytes"),
    ({'ethertype = 0x88B5': 'ethertype = 0x0800'}, "heartbeat.ethertype", "another protocol"),
    ({'reuse = 750.0': 'reuse = 5000.0'}, "damping.reuse", "below damping.suppress"),
    ({'listen = ""': 'listen = "localhost"'}, "metrics.listen", "HOST:PORT"),
]


@pytest.mark.parametrize("subs,key,reason", BAD, ids=[b[1] for b in BAD])
def test_bad_input_names_the_key(keyfile, subs, key, reason):
    with pytest.raises(config.ConfigError) as info:
        config.parse(example(keyfile, **subs), file="bad.toml")
    assert info.value.file == "bad.toml"
    assert info.value.key == key
    assert reason in info.value.reason


def test_missing_section_and_single_path(keyfile):
    text = example(keyfile)
    no_identity = text.split("# The identity that moves")[0]
    with pytest.raises(config.ConfigError, match="identity: is required"):
        config.parse(no_identity)
    one_path = re.sub(r"\[\[path\]\]\nname = \"alternate\"\ninterface = \"nic3\"\n", "", text)
    with pytest.raises(config.ConfigError, match="at least 2 paths"):
        config.parse(one_path)


@pytest.mark.parametrize("content,reason", [(None, "cannot read"), ("0123abcd\n", "at least 32")])
def test_key_file_missing_or_short_is_a_config_error(tmp_path, content, reason):
    key = tmp_path / "k"
    if content is not None:
        key.write_text(content)
        key.chmod(0o600)
    with pytest.raises(config.ConfigError) as info:
        config.parse(example(key))
    assert info.value.key == "heartbeat.key_file" and reason in info.value.reason


def test_missing_interface_is_reported(keyfile):
    with pytest.raises(config.ConfigError) as info:
        config.parse(example(keyfile), interface_exists=lambda name: name != "nic3")
    assert info.value.key == "path[1].interface" and "no interface named 'nic3'" in info.value.reason


def test_cli_check_exits_2_naming_file_and_key(tmp_path, keyfile):
    bad = tmp_path / "bad.toml"
    bad.write_text(example(keyfile, **{'multiplier = 3 ': 'multiplier = 300 '}))
    proc = subprocess.run([sys.executable, "-m", "hanet", "check", "--no-interfaces", "-c", str(bad)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert f"{bad}: heartbeat.multiplier: out of range" in proc.stderr
    good = tmp_path / "good.toml"
    good.write_text(example(keyfile))
    proc = subprocess.run([sys.executable, "-m", "hanet", "check", "--no-interfaces", "-c", str(good)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_every_mistake_in_the_file_is_reported_at_once(keyfile):
    text = example(keyfile, **{
        'multiplier = 3 ': 'multiplyer = 3 ',                             # unknown key
        'interval_ms = 10.0': 'interval_ms = "fast"',                     # wrong type
        'vips = ["192.0.2.100/24"]': 'vips = ["nope", "192.0.2.100/24", 7]',  # two bad items
        'policy = "auto"': 'policy = "sometimes"',                        # not one of
        'reuse = 750.0': 'reuse = 5000.0',                                # cross-key check
        'interface = "nic3"': 'interface = "nic1"',                       # duplicate
    })
    text = text.replace('address = "192.0.2.1/24"    # IPv4', '# IPv4')     # required key missing
    with pytest.raises(config.ConfigError) as info:
        config.parse(text, file="bad.toml", interface_exists=lambda name: name != "nic1")
    found = {(p.key, p.reason.split(":")[0]) for p in info.value.problems}
    keys = [p.key for p in info.value.problems]
    assert set(keys) == {"heartbeat.multiplyer", "heartbeat.interval_ms", "identity.vips[0]",
                         "identity.vips[2]", "failback.policy", "damping.reuse", "path[1].interface",
                         "path[0].interface", "identity.address"}, found
    assert keys.count("path[1].interface") == 2  # used by path[0] too; and no such NIC here
    assert all(p.file == "bad.toml" for p in info.value.problems)
    # The first problem is the exception's own file/key/reason; its str names them all.
    assert (info.value.key, info.value.reason) == (keys[0], info.value.problems[0].reason)
    for problem in info.value.problems:
        assert str(problem) in str(info.value)


def test_a_missing_section_is_reported_once_not_per_key(keyfile):
    text = example(keyfile).split("# The identity that moves")[0]
    text = text.replace('[node]\nid = "alpha"', '[node]\nid = 5')
    with pytest.raises(config.ConfigError) as info:
        config.parse(text)
    assert [p.key for p in info.value.problems] == ["node.id", "identity"]


def test_cli_lists_every_problem_and_exits_2(tmp_path, keyfile):
    bad = tmp_path / "bad.toml"
    bad.write_text(example(keyfile, **{'multiplier = 3 ': 'multiplier = 300 ', 'keep = 8 ': 'keep = 0 ',
                                       'policy = "auto"': 'policy = 1'}))
    # `run` stops there too, before touching anything (a NIC missing here is no error for it).
    for command, count in ((["check", "--no-interfaces"], 3), (["run"], 3)):
        proc = subprocess.run([sys.executable, "-m", "hanet", *command, "-c", str(bad)],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.splitlines()
        assert f"hanet: config error: {bad}: heartbeat.multiplier: out of range: 300 not in [1, 255]" in lines
        assert f"hanet: config error: {bad}: failback.policy: must be str, not int (1)" in lines
        assert any(line.startswith(f"hanet: config error: {bad}: eventlog.keep: out of range") for line in lines)
        assert f"hanet: {count} problems in {bad}" in lines


@pytest.mark.parametrize("nested", [
    "x = " + "[" * 100_000 + "]" * 100_000,
    "x = " + "{a = " * 100_000 + "1" + "}" * 100_000,
    "x = 1" + "0" * 10_000,  # past Python's integer digit limit
], ids=["arrays", "inline-tables", "huge-integer"])
def test_any_file_the_decoder_cannot_take_is_a_config_error(tmp_path, nested):
    with pytest.raises(config.ConfigError) as info:
        config.parse(nested, file="deep.toml")
    assert info.value.key == "(syntax)"
    path = tmp_path / "deep.toml"
    path.write_text(nested)
    proc = subprocess.run([sys.executable, "-m", "hanet", "check", "--no-interfaces", "-c", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{path}: (syntax):" in proc.stderr


WRONG_VALUES = ("[]", "{}", '"x"', "-1", "true", "[1, {}]", '{ a = 1 }')


@pytest.mark.parametrize("wrong", WRONG_VALUES)
def test_any_wrong_value_anywhere_is_reported_not_crashed_on(keyfile, wrong):
    """Reading on past a bad key must never trip over the value it fell back to."""
    lines = example(keyfile).splitlines()
    assignments = [i for i, line in enumerate(lines) if re.match(r"^\s*[a-z_0-9]+\s*=", line)]
    assert len(assignments) > 40
    for i in assignments:
        key = lines[i].split("=")[0].strip()
        mutated = lines[:i] + [f"{key} = {wrong}"] + lines[i + 1:]
        try:
            config.parse("\n".join(mutated), file="m.toml", interface_exists=lambda name: True)
        except config.ConfigError as exc:
            assert exc.problems and all(p.file == "m.toml" and p.key and p.reason for p in exc.problems)

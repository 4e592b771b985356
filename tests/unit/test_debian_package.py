"""debian/: the package's dependencies are pyproject's, and it ships the unit, user and config.

The package itself is built and installed in tests/systemd; these checks catch drift cheaply.
"""
from __future__ import annotations

import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEBIAN = ROOT / "debian"


def control_depends() -> dict[str, str]:
    """Binary package Depends: Debian package -> version floor ("" if none)."""
    text = (DEBIAN / "control").read_text()
    binary = text.split("\nPackage: hanet\n", 1)[1]
    field = re.search(r"^Depends:(.*?)(?=^\S)", binary, re.M | re.S).group(1)
    out = {}
    for item in (x.strip() for x in field.split(",")):
        m = re.fullmatch(r"([a-z0-9.+-]+)(?: \(>= ([^)]+)\))?", item)
        if m:
            out[m.group(1)] = m.group(2) or ""
    return out


def test_every_python_dependency_is_a_debian_package_with_the_same_floor():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    depends = control_depends()
    for requirement in project["dependencies"]:
        name, floor = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement).groups()
        debian_name = "python3-" + name.lower().replace("_", "-")
        assert depends.get(debian_name) == floor, (requirement, debian_name, depends)


def test_build_uses_pybuild_with_the_pyproject_plugin_and_debians_cython():
    control = (DEBIAN / "control").read_text()
    for build_dep in ("dh-sequence-python3", "pybuild-plugin-pyproject", "cython3", "libssl-dev",
                      "dh-sequence-installsysusers"):
        assert re.search(rf"^(Build-Depends:)?\s+{re.escape(build_dep)}[ ,(]", control, re.M), build_dep
    assert "--buildsystem=pybuild" in (DEBIAN / "rules").read_text()
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert "Cython>=0.29.32" in requires  # Debian 12's cython3


def test_ships_the_unit_the_user_and_the_example_config():
    assert (DEBIAN / "hanet.service").resolve() == ROOT / "conf" / "hanet.service"
    assert (DEBIAN / "hanet.sysusers").resolve() == ROOT / "conf" / "hanet.sysusers"
    assert (DEBIAN / "hanet.install").read_text().split() == ["conf/hanet.toml", "etc/hanet/"]

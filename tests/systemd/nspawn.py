"""Debian 12 containers with systemd as PID 1, for testing hanet as the Debian package runs it.

Pieces, each cached under /var/tmp between runs:
- a bookworm root (mmdebstrap, minbase) with systemd and hanet's runtime dependencies from Debian,
  keyed on the package list; booted with --volatile=overlay, so every boot starts from it unchanged;
- bookworm's systemd-nspawn, unpacked into a private folder (the host gets no systemd-container);
- the hanet .deb from bin/package, keyed on the content of the tree's files.

Every container runs in a cgroup of its own, made here and removed afterwards; its network is
private, and the cables between two containers are veth pairs created straight into their network
namespaces (nothing appears in the host's). Names carry a per-run token, so runs never collide.
systemd only ever runs on a root of its own, never on the host's.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pathlib
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field

REPO = pathlib.Path(__file__).resolve().parents[2]
CACHE = pathlib.Path("/var/tmp/hanet-systemd-cache")
SUITE = "bookworm"
# What the containers have before hanet's package is installed: systemd, and hanet's dependencies
# from Debian, so each boot only installs the .deb itself; nftables and ping drive the faults.
ROOT_PACKAGES = ("systemd", "dbus", "python3", "iproute2", "nftables", "iputils-ping", "libssl3", "procps",
                 "python3-transitions", "python3-pyroute2", "python3-msgpack", "python3-sdnotify",
                 "python3-prometheus-client")
CGROUP_HIERARCHIES = ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup")
PROPAGATE = pathlib.Path("/run/systemd/nspawn/propagate")
DEB_MOUNT = "/mnt/hanet-deb"


def run(*argv: str, timeout: float = 120, check: bool = True, env: dict | None = None,
        input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc


@contextlib.contextmanager
def _locked(name: str):
    """One builder at a time per cache entry, across processes."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little") + part)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- cached pieces
def cached_root() -> pathlib.Path:
    """The bookworm root directory, built once per package list."""
    sources = pathlib.Path("/etc/apt/sources.list.d/debian.sources")
    mirror = str(sources) if sources.exists() else "/etc/apt/sources.list"  # apt's own mirrors
    root = CACHE / f"root-{SUITE}-{_digest(SUITE.encode(), ' '.join(ROOT_PACKAGES).encode())}"
    with _locked(root.name):
        if (root / "usr/lib/systemd/systemd").exists():
            return root
        for old in CACHE.glob(f"root-{SUITE}-*"):  # built for another package list
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        partial = root.with_name(root.name + ".partial")
        run("mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(ROOT_PACKAGES)}",
            # The container's name is its hostname; no cached machine identity either.
            "--customize-hook=rm -f \"$1/etc/hostname\"; : > \"$1/etc/machine-id\"",
            SUITE, str(partial), mirror, timeout=900)
        partial.rename(root)
        return root


def _systemd_version() -> str:
    """The host's systemd library version if it has one (then nspawn matches it), else apt's."""
    installed = run("dpkg-query", "-W", "-f=${Version}", "libsystemd-shared", check=False)
    if installed.returncode == 0 and installed.stdout.strip():
        return installed.stdout.strip()
    shown = run("apt-cache", "show", "--no-all-versions", "systemd-container").stdout
    return next(line.split(":", 1)[1].strip() for line in shown.splitlines() if line.startswith("Version:"))


def nspawn_command() -> tuple[list[str], dict[str, str]]:
    """Debian's systemd-nspawn of the host's systemd version, unpacked into the cache."""
    version = _systemd_version()
    folder = CACHE / f"nspawn-{version}"
    binary = folder / "usr/bin/systemd-nspawn"
    with _locked(folder.name):
        if not binary.exists():
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            (partial / "debs").mkdir(parents=True)
            pkgs = [f"systemd-container={version}", f"libsystemd-shared={version}"]
            # apt-get download writes into its working directory; with stale lists, update once.
            download = ["apt-get", "download", *pkgs]
            if subprocess.run(download, cwd=partial / "debs", capture_output=True, timeout=300).returncode != 0:
                run("apt-get", "update", "-qq", timeout=300)
                subprocess.run(download, cwd=partial / "debs", check=True, capture_output=True, timeout=300)
            for deb in (partial / "debs").glob("*.deb"):
                run("dpkg-deb", "-x", str(deb), str(partial))
            partial.rename(folder)
    libdirs = [str(p) for p in folder.glob("usr/lib/*/systemd")] + [str(p) for p in folder.glob("lib/*/systemd")]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LD_LIBRARY_PATH": ":".join(libdirs),
           # BPF-based unit settings (PrivateDevices' device policy) need the unified hierarchy.
           "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
    return [str(binary)], env


def _tree_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, check=True).stdout.decode()
    return sorted(f for f in out.split("\0") if f and not f.startswith("dist/") and (REPO / f).is_file())


def hanet_deb() -> pathlib.Path:
    """The .deb of this tree, built by bin/package unless one of the same files is cached."""
    parts = []
    for name in _tree_files():
        parts += [name.encode(), (REPO / name).read_bytes()]
    key = _digest(*parts)
    cached = CACHE / f"deb-{key}"
    with _locked("deb"):
        debs = sorted(cached.glob("hanet_*.deb"))
        if debs:
            return debs[0]
        run(str(REPO / "bin/package"), timeout=900)
        built = sorted((REPO / "dist").glob("hanet_*.deb"))
        assert len(built) == 1, built
        for old in CACHE.glob("deb-*"):  # only the newest build is kept
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        partial = cached.with_name(cached.name + ".partial")
        partial.mkdir()
        shutil.copy2(built[0], partial / built[0].name)
        partial.rename(cached)
        return cached / built[0].name


# --------------------------------------------------------------------------- containers
def _cgroup_dirs(name: str) -> list[pathlib.Path]:
    """The cgroup of one container in each hierarchy this host has (hybrid or unified)."""
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):  # pure cgroup v2
        return [pathlib.Path("/sys/fs/cgroup") / name]
    return [pathlib.Path(h) / name for h in CGROUP_HIERARCHIES[:2] if os.path.ismount(h)]


def _cgroup_pids(top: pathlib.Path) -> set[int]:
    pids = set()
    for procs in top.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids.update(int(x) for x in procs.read_text().split())
    return pids


def _remove_cgroup(top: pathlib.Path) -> None:
    """Depth-first: a cgroup can only go once its children have."""
    if not top.exists():
        return
    for sub in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        top.rmdir()


@dataclass
class Container:
    """One booted Debian container; ``pid`` is its PID 1 as the host sees it."""
    name: str
    root: pathlib.Path
    deb_dir: pathlib.Path
    workdir: pathlib.Path
    launcher: subprocess.Popen | None = None
    pid: int = 0
    cgroups: list[pathlib.Path] = field(default_factory=list)

    def boot(self, timeout_s: float = 60) -> None:
        command, env = nspawn_command()
        self.cgroups = _cgroup_dirs(self.name)
        for cg in self.cgroups:
            cg.mkdir()
        cgroups = [str(cg / "cgroup.procs") for cg in self.cgroups]

        def own_cgroup() -> None:  # in the child, before exec: nspawn then keeps this cgroup
            for procs in cgroups:
                with open(procs, "w") as fh:
                    fh.write("0")

        console = open(self.workdir / f"{self.name}.console", "w")
        self.launcher = subprocess.Popen(
            [*command, "--quiet", "--boot", f"--directory={self.root}", f"--machine={self.name}",
             "--register=no", "--keep-unit", "--volatile=overlay", "--private-network",
             "--system-call-filter=bpf", "--console=read-only", "--link-journal=no",
             f"--bind-ro={self.deb_dir}:{DEB_MOUNT}"],
            env=env, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
            preexec_fn=own_cgroup)
        console.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.launcher.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.launcher.returncode}:\n{self.console_tail()}")
            self.pid = self.pid or self._find_pid1()
            if self.pid and os.path.exists(f"/proc/{self.pid}/root/run/systemd/private"):
                break
            time.sleep(0.05)
        else:
            raise TimeoutError(f"{self.name} did not boot in {timeout_s} s:\n{self.console_tail()}")
        state = self.sh("systemctl is-system-running --wait", check=False, timeout=timeout_s).stdout.strip()
        if state not in ("running", "degraded"):
            raise RuntimeError(f"{self.name} is {state!r}:\n{self.sh('systemctl --failed', check=False).stdout}")

    def _find_pid1(self) -> int:
        """nspawn's child whose command is systemd: the container's PID 1."""
        assert self.launcher is not None
        with contextlib.suppress(OSError):
            for child in pathlib.Path(f"/proc/{self.launcher.pid}/task/{self.launcher.pid}/children").read_text().split():
                if pathlib.Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
        return 0

    def console_tail(self, lines: int = 40) -> str:
        path = self.workdir / f"{self.name}.console"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def run(self, *argv: str, check: bool = True, timeout: float = 60, input: str | None = None
            ) -> subprocess.CompletedProcess:
        """``argv`` inside the container: all of its namespaces, its root, its environment."""
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0",
               "LANG": "C.UTF-8", "TERM": "dumb"}
        return run("nsenter", f"--target={self.pid}", "--mount", "--uts", "--ipc", "--net", "--pid",
                   "--cgroup", "--root", "--wd", *argv, check=check, timeout=timeout, env=env, input=input)

    def sh(self, script: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.run("/bin/sh", "-c", script, check=check, timeout=timeout)

    def write(self, path: str, text: str, mode: int = 0o644, group: str = "root") -> None:
        self.run("/bin/sh", "-c", f'umask 077 && cat > "$0" && chgrp {group} "$0" && chmod {mode:o} "$0"', path,
                 input=text)

    def read(self, path: str) -> str:
        return self.run("/bin/cat", path).stdout

    def shutdown(self, timeout_s: float = 15) -> None:
        """Power off, then make sure: kill what is left in its cgroups, remove them and nspawn's files."""
        try:
            if self.launcher is not None and self.launcher.poll() is None:
                # nspawn turns SIGTERM into an orderly shutdown of the container.
                self.launcher.send_signal(signal.SIGTERM)
                try:
                    self.launcher.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.launcher.kill()
                    self.launcher.wait(10)
        finally:
            for _ in range(50):
                pids = set().union(*(_cgroup_pids(cg) for cg in self.cgroups if cg.exists()))
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
            for cg in self.cgroups:
                _remove_cgroup(cg)
            shutil.rmtree(PROPAGATE / self.name, ignore_errors=True)


NAME_RE = re.compile(r"^hanet-(\d+)-[0-9a-f]+-\w+$")


def container_name(node: str, token: str) -> str:
    """``hanet-<pid of this process>-<token>-<node>``: unique per run, and says whose it is."""
    return f"hanet-{os.getpid()}-{token}-{node}"


def unique_token() -> str:
    return secrets.token_hex(3)


def sweep_stale() -> list[str]:
    """Remove containers left by test processes that no longer exist (killed before cleaning up)."""
    removed = []
    for hierarchy in {p.parent for p in _cgroup_dirs("x")}:
        for cg in hierarchy.glob("hanet-*"):
            m = NAME_RE.match(cg.name)
            if m and cg.is_dir() and not os.path.exists(f"/proc/{m.group(1)}"):
                Container(cg.name, pathlib.Path("/"), pathlib.Path("/"), pathlib.Path("/"),
                          cgroups=[cg]).shutdown()
                removed.append(cg.name)
    return removed


def cable(a: Container, if_a: str, b: Container, if_b: str) -> None:
    """A crossover cable made directly inside the two containers' network namespaces."""
    run("ip", "link", "add", if_a, "netns", str(a.pid), "type", "veth", "peer", "name", if_b, "netns", str(b.pid))
    a.run("ip", "link", "set", if_a, "up")
    b.run("ip", "link", "set", if_b, "up")

"""The ``hanet`` command. Exit codes: 0 ok, 1 failure, 2 bad configuration or usage."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import sys

from . import __version__
from . import config as config_mod

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
DEFAULT_CONFIG = "/etc/hanet/hanet.toml"
DEFAULT_SOCKET = config_mod.ControlConfig.socket


def interface_exists(name: str) -> bool:
    """Read-only netlink lookup in the current network namespace."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))


def load_config(path: str, check_interfaces: bool = True) -> config_mod.Config:
    return config_mod.load(path, interface_exists=interface_exists if check_interfaces else None)


def cmd_check(args) -> int:
    cfg = load_config(args.config, check_interfaces=not args.no_interfaces)
    print(f"{cfg.file}: ok: node {cfg.node_id} -> peer {cfg.peer_id}, "
          f"paths {', '.join(f'{p.name}({p.interface})' for p in cfg.paths)}, "
          f"heartbeat {cfg.heartbeat.interval_ms:g} ms x {cfg.heartbeat.multiplier}")
    return EXIT_OK


def cmd_run(args) -> int:
    # A NIC may be missing (unplugged, a driver reset): its path starts gone and comes back when
    # the NIC does. With none of them here there is nothing to run on.
    cfg = load_config(args.config, check_interfaces=False)
    if not any(interface_exists(p.interface) for p in cfg.paths):
        raise config_mod.ConfigError(cfg.file, "path[*].interface",
                                     "none of the configured interfaces exists here")
    from .engine import Engine

    engine = Engine(cfg, dry_run=args.dry_run)
    return asyncio.run(engine.run())


def cmd_replay(args) -> int:
    from . import replay

    return replay.main(args.rest)


def _socket(args) -> str:
    if args.socket:
        return args.socket
    if args.config:
        return _socket_from_config(args.config)
    return DEFAULT_SOCKET


def _socket_from_config(path: str) -> str:
    """Only [control] socket: an operator allowed to run status need not be able to read the
    heartbeat key or see the NICs that a full check of the file wants."""
    import tomllib

    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise config_mod.ConfigError(path, "(file)", f"cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise config_mod.ConfigError(path, "(syntax)", str(exc)) from None
    control = doc.get("control", {})
    socket = control.get("socket", DEFAULT_SOCKET) if isinstance(control, dict) else None
    if not isinstance(socket, str) or not socket:
        raise config_mod.ConfigError(path, "control.socket", "must be a non-empty string")
    return socket


def _control(args, cmd: str, **kwargs) -> int:
    from . import control

    path = _socket(args)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # an option not given is no argument
    try:
        reply = control.request(path, cmd, **kwargs)
    except (OSError, control.ControlError) as exc:
        print(f"hanet: cannot reach the daemon at {path}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if getattr(args, "json", False):
        print(json.dumps(reply, indent=2, sort_keys=True))
    elif not reply.get("ok"):
        print(f"hanet: {cmd} refused: {reply.get('error', '')}", file=sys.stderr)
    elif cmd == "status":
        print(control.render_status(reply))
    else:
        print(f"{cmd} done: {reply.get('reason', '')} "
              f"(state {reply.get('state')}, active path {reply.get('active')})")
    return EXIT_OK if reply.get("ok") else EXIT_FAIL


def cmd_status(args) -> int:
    return _control(args, "status")


def cmd_failover(args) -> int:
    return _control(args, "failover", to=args.to, force=args.force)


def cmd_failback(args) -> int:
    return _control(args, "failback", force=args.force)


def cmd_offline(args) -> int:
    return _control(args, "offline", interface=args.interface, force=args.force)


def cmd_online(args) -> int:
    return _control(args, "online", interface=args.interface)


def cmd_keygen(args) -> int:
    """Write a new random heartbeat key, readable by the owner only."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(args.file, flags, 0o600)
    except FileExistsError:
        print(f"hanet: {args.file} exists; not overwriting a key", file=sys.stderr)
        return EXIT_FAIL
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")  # 32 random bytes as 64 hex digits (hanet/keyfile.py)
        fh.flush()
        os.fsync(fh.fileno())
    print(f"wrote a 256-bit key to {args.file}; copy it to the peer")
    from . import keyfile

    try:
        keyfile.read_key(args.file)
    except keyfile.KeyFileError as exc:  # e.g. a directory others can write: say so now, not at start
        print(f"hanet: warning: hanet will refuse this key file: {exc}", file=sys.stderr)
    return EXIT_OK


def cmd_lab(args) -> int:
    from . import lab

    return lab.main(args.rest)


LOG_FORMAT = "hanet: %(levelname)s %(message)s"


def _setup_logging(verbose: bool, daemon: bool = False) -> None:
    # One line per event on stderr; journald adds the time and the unit.
    level = logging.DEBUG if verbose else logging.INFO
    if daemon:  # lines go out on a thread of their own: a reader that hangs holds up nothing
        import atexit

        from .loglines import LineWriter
        atexit.register(LineWriter(sys.stderr, level, LOG_FORMAT).stop)
    else:
        logging.basicConfig(stream=sys.stderr, level=level, format=LOG_FORMAT)
    logging.getLogger("transitions").setLevel(logging.WARNING)  # its per-callback INFO lines are noise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hanet", description="Keeps two servers talking when a path between them breaks.")
    parser.add_argument("--version", action="version", version=f"hanet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the daemon")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    p.add_argument("--dry-run", action="store_true", help="print each action it would take; touch nothing")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate a configuration file")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    p.add_argument("--no-interfaces", action="store_true", help="do not check that the NICs exist here")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("replay", help="timeline, --verify, --stats of event logs", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("lab", help="two namespaced nodes: up, fault, heal, status, down, demo", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_lab)

    for name, func, help_text in (("status", cmd_status, "state, paths, RTT, drops, last transitions"),
                                  ("failover", cmd_failover, "planned switch away from the active path"),
                                  ("failback", cmd_failback, "planned return to the primary"),
                                  ("offline", cmd_offline, "take a NIC out of service"),
                                  ("online", cmd_online, "bring a NIC back into service")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("-s", "--socket", help=f"control socket (default: from -c, else {DEFAULT_SOCKET})")
        p.add_argument("-c", "--config", help="read the control socket path from this configuration")
        if name in ("offline", "online"):
            p.add_argument("interface", help="the NIC (or path name)")
        if name == "failover":
            p.add_argument("--to", help="target NIC or path name (default: the best usable)")
        if name in ("failover", "failback", "offline"):
            p.add_argument("--force", action="store_true", help="even onto / off a path not known healthy")
        if name == "status":
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)

    p = sub.add_parser("keygen", help="write a new random heartbeat key file")
    p.add_argument("file")
    p.set_defaults(func=cmd_keygen)
    return parser


#: Subcommands with parsers of their own; their arguments are passed through untouched.
DELEGATED = {"replay": "hanet.replay", "lab": "hanet.lab"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        import importlib

        _setup_logging(verbose=False)
        return importlib.import_module(DELEGATED[argv[0]]).main(argv[1:])
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose, daemon=args.func is cmd_run)
    try:
        return args.func(args)
    except config_mod.ConfigError as exc:
        for problem in exc.problems:  # every mistake in the file, one a line
            print(f"hanet: config error: {problem}", file=sys.stderr)
        if len(exc.problems) > 1:
            print(f"hanet: {len(exc.problems)} problems in {exc.file}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())

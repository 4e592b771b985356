"""Frozen event and action types, each with a stable type string.

Events are the machine's inputs; actions are its outputs. Both are plain data: every field is an
int, str, bool, float, None or a tuple of those, so a record round-trips through msgpack exactly.
The ``type`` string, not the class path, is what the event log stores, so classes can be renamed
without breaking old logs.

Times are CLOCK_MONOTONIC nanoseconds (``t_ns``), shared by every network namespace on a host.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, ClassVar

EVENT_TYPES: dict[str, type["Event"]] = {}
ACTION_TYPES: dict[str, type["Action"]] = {}


def _register(registry: dict[str, type], cls: type) -> type:
    if cls.type in registry:
        raise ValueError(f"duplicate type string {cls.type!r}")
    registry[cls.type] = cls
    return cls


def event(cls):
    cls = dataclass(frozen=True)(cls)
    return _register(EVENT_TYPES, cls)


def action(cls):
    cls = dataclass(frozen=True)(cls)
    return _register(ACTION_TYPES, cls)


def _to_wire(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def to_dict(item: "Event | Action") -> dict[str, Any]:
    """The record form: {"type": ..., field: value, ...}."""
    out: dict[str, Any] = {"type": item.type}
    for name in _field_names(type(item)):
        out[name] = _to_wire(getattr(item, name))
    return out


def _from_dict(registry: dict[str, type], data: dict[str, Any]):
    cls = registry.get(data.get("type"))
    if cls is None:
        raise ValueError(f"unknown type {data.get('type')!r}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = data[f.name]
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


def event_from_dict(data: dict[str, Any]) -> "Event":
    return _from_dict(EVENT_TYPES, data)


def action_from_dict(data: dict[str, Any]) -> "Action":
    return _from_dict(ACTION_TYPES, data)


# --------------------------------------------------------------------------- events
@dataclass(frozen=True)
class Event:
    type: ClassVar[str] = "event"
    t_ns: int


@event
class DaemonStarted(Event):
    """The daemon (re)started and reconciled with the kernel.

    ``holder`` is the path index whose interface carries the identity now (None: on none, or split).
    ``carrier`` is the carrier bit per path as read at start, ``present`` whether its NIC exists.
    ``down_ns`` is how long the daemon was not running, by the wall clock: after a reboot the
    monotonic clock starts again, and the machine carries its recorded times over with it.
    """
    type: ClassVar[str] = "daemon.started"
    holder: int | None = None
    carrier: tuple[bool, ...] = ()
    macs: tuple[str, ...] = ()      # each path NIC's MAC as found now ("" if the NIC is missing)
    hw_macs: tuple[str, ...] = ()   # each NIC's permanent MAC where the driver reports one, else ""
    present: tuple[bool, ...] = ()
    down_ns: int = 0


@event
class HeartbeatSuspect(Event):
    """First missed reply on a path. Lags are the prober's own, over the window that led here."""
    type: ClassVar[str] = "heartbeat.suspect"
    path: int = 0
    misses: int = 1
    send_lag_max_ns: int = 0
    recv_delay_max_ns: int = 0


@event
class HeartbeatLost(Event):
    """``multiplier`` consecutive missed replies: the path is declared failed by heartbeats."""
    type: ClassVar[str] = "heartbeat.lost"
    path: int = 0
    misses: int = 0
    first_miss_ns: int = 0  # monotonic time the first of these misses was noticed
    send_lag_max_ns: int = 0
    recv_delay_max_ns: int = 0
    confirms_sent: int = 0      # confirmation requests sent since the first overdue reply
    confirm_first_ns: int = 0   # monotonic time of the first overdue reply (0: probing off)
    judged_ns: int = 0          # when the window had passed with every question unanswered
    witnessed_ns: int = 0       # when the peer was heard on another path after that (0: no
                                # other path could tell, or BFD's detection time passed)


@event
class HeartbeatCleared(Event):
    """A reply arrived after a suspect, before the path was declared lost."""
    type: ClassVar[str] = "heartbeat.cleared"
    path: int = 0
    rtt_ns: int = 0
    confirms_sent: int = 0      # confirmation requests sent since the first overdue reply
    confirms_answered: int = 0  # 1: the reply that cleared answered a confirmation
    confirm_first_ns: int = 0   # monotonic time of the first overdue reply (0: probing off)


@event
class HeartbeatRecovered(Event):
    """``recover_count`` consecutive replies on a path that was lost (or never yet heard)."""
    type: ClassVar[str] = "heartbeat.recovered"
    path: int = 0
    replies: int = 0
    rtt_ns: int = 0


@event
class LinkDown(Event):
    """Carrier lost. ``source`` is "poll" (the fast carrier read) or "netlink"."""
    type: ClassVar[str] = "link.down"
    path: int = 0
    source: str = "poll"


@event
class LinkUp(Event):
    type: ClassVar[str] = "link.up"
    path: int = 0
    source: str = "poll"


@event
class LinkGone(Event):
    """The path's interface was deleted or renamed away."""
    type: ClassVar[str] = "link.gone"
    path: int = 0
    ifname: str = ""


@event
class LinkReturned(Event):
    """The path's interface exists again (re-created, or renamed back), maybe with a new ifindex."""
    type: ClassVar[str] = "link.returned"
    path: int = 0
    ifindex: int = 0
    mac: str = ""      # the NIC's MAC as it came back
    hw_mac: str = ""   # its permanent MAC where the driver reports one


@event
class AddressRemoved(Event):
    """A carried address vanished from the holding interface behind hanet's back."""
    type: ClassVar[str] = "address.removed"
    path: int = 0
    address: str = ""


@event
class PathQuality(Event):
    """Loss and RTT over the prober's quality window."""
    type: ClassVar[str] = "path.quality"
    path: int = 0
    loss_ppm: int = 0
    rtt_p50_ns: int = 0
    rtt_p99_ns: int = 0


@event
class PeerNotice(Event):
    """The peer announced (authenticated, over ``path``) that its identity now sits on ``active``.

    ``crossed``: the peer sent it before it had heard our latest notice, so the two notices
    crossed on the way and neither node knew of the other's when it chose."""
    type: ClassVar[str] = "peer.notice"
    path: int = 0
    active: int = 0
    peer_seq: int = 0
    crossed: bool = False


@event
class TimerFired(Event):
    type: ClassVar[str] = "timer.fired"
    name: str = ""


@event
class ActionDone(Event):
    type: ClassVar[str] = "action.done"
    action_id: int = 0
    kind: str = ""
    detail: str = ""


@event
class ActionFailed(Event):
    type: ClassVar[str] = "action.failed"
    action_id: int = 0
    kind: str = ""
    error: str = ""


@event
class OperatorFailover(Event):
    """Planned switch away from the active path (to the best other usable one, or ``path``)."""
    type: ClassVar[str] = "operator.failover"
    path: int | None = None
    who: str = ""
    force: bool = False


@event
class OperatorFailback(Event):
    type: ClassVar[str] = "operator.failback"
    who: str = ""
    force: bool = False


@event
class OperatorOffline(Event):
    type: ClassVar[str] = "operator.offline"
    path: int = 0
    who: str = ""
    force: bool = False


@event
class OperatorOnline(Event):
    type: ClassVar[str] = "operator.online"
    path: int = 0
    who: str = ""


# --------------------------------------------------------------------------- actions
@dataclass(frozen=True)
class Action:
    """An effect the shell carries out. ``id`` is unique within one daemon run's log."""
    type: ClassVar[str] = "action"
    id: int


@action
class PauseMonitoring(Action):
    """Stop acting on heartbeat/link events of ``path`` (probing itself goes on)."""
    type: ClassVar[str] = "probe.pause"
    path: int = 0


@action
class ResumeMonitoring(Action):
    type: ClassVar[str] = "probe.resume"
    path: int = 0


@action
class RebindProbe(Action):
    """``path``'s interface was re-created: reopen its heartbeat socket on the new ifindex."""
    type: ClassVar[str] = "probe.rebind"
    path: int = 0


@action
class DisableNic(Action):
    """Remove the carried addresses from ``path``'s NIC; set it admin-down only if ``admin_down``.
    A NIC that does not exist holds nothing: the goal is reached."""
    type: ClassVar[str] = "nic.disable"
    path: int = 0
    admin_down: bool = False


@action
class PlumbNic(Action):
    """Bring ``path``'s NIC administratively up."""
    type: ClassVar[str] = "nic.plumb"
    path: int = 0


@action
class ConfigureNic(Action):
    """Give ``path``'s NIC the identity taken over from ``from_path``: the MAC ``layout`` (one MAC
    per path, () = MACs are not carried) is applied as a permutation of the NICs' current MACs,
    through temporary locally administered MACs, so no two NICs ever share one."""
    type: ClassVar[str] = "nic.configure"
    path: int = 0
    from_path: int | None = None
    layout: tuple[str, ...] = ()


@action
class EnableNic(Action):
    """Put the carried addresses (IPv4 + broadcast, IPv6, VIPs) on ``path``'s NIC."""
    type: ClassVar[str] = "nic.enable"
    path: int = 0


@action
class Announce(Action):
    """Gratuitous ARP and unsolicited neighbour advertisements for the carried addresses."""
    type: ClassVar[str] = "nic.announce"
    path: int = 0
    count: int = 1


@action
class MoveRoutes(Action):
    """Re-point the carried routes at ``path``'s NIC."""
    type: ClassVar[str] = "nic.routes"
    path: int = 0


@action
class SendNotice(Action):
    """Tell the peer, over ``path``, that the identity now sits on ``active``; ``seen``: the id
    (``PeerNotice.peer_seq``) of the peer's newest notice this node had acted on, 0 if none."""
    type: ClassVar[str] = "peer.notify"
    path: int = 0
    active: int = 0
    seen: int = 0


@action
class StartTimer(Action):
    type: ClassVar[str] = "timer.start"
    name: str = ""
    deadline_ns: int = 0


@action
class CancelTimer(Action):
    type: ClassVar[str] = "timer.cancel"
    name: str = ""


#: Actions that change the kernel; everything else is internal to the daemon.
KERNEL_ACTIONS = (DisableNic, PlumbNic, ConfigureNic, EnableNic, Announce, MoveRoutes)


@event
class PathCrossed(Event):
    """Path ``path`` hears the peer's path ``peer_path``: the cables are crossed (or re-cabled).
    The prober names each change once; frames of another path are dropped, never answered."""
    type: ClassVar[str] = "path.crossed"
    path: int = 0
    peer_path: int = 0


@event
class SequenceLow(Event):
    """This node's heartbeat sequence numbers are nearly used up (``remaining`` left; 0: none,
    and nothing is sent any more rather than a number reused)."""
    type: ClassVar[str] = "probe.seq_low"
    remaining: int = 0

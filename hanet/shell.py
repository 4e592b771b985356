"""Carries out the actions of one machine step, under one explicit contract.

- Actions run in the order the machine emitted them.
- Kernel actions (``model.KERNEL_ACTIONS``) go to the netlink thread, consecutive ones in one hop.
  They stop at the first failure: every later kernel action of the same step is skipped, since it
  depends on the one that failed, and the machine decides what comes next from the
  ``action.failed`` event.
- Bookkeeping actions (probe pause/resume/rebind, timers, the peer notice) always run, whatever
  failed before them: a failed kernel step must never leave a path's monitoring paused or a
  timer unarmed.
- The outcome of every kernel action that ran comes back as an event, to be handled next.
"""
from __future__ import annotations

import logging
from typing import Callable, Protocol

from . import model as m

log = logging.getLogger("hanet")


class Timers(Protocol):
    def start(self, name: str, deadline_ns: int) -> None: ...
    def cancel(self, name: str) -> None: ...


class Shell:
    def __init__(self, run_kernel: Callable[[list[m.Action]], list[m.Event]], prober, timers: Timers):
        self.run_kernel = run_kernel   # runs actions in order up to the first failure; outcome each
        self.prober = prober
        self.timers = timers

    def carry_out(self, actions: tuple[m.Action, ...]) -> list[m.Event]:
        outcomes: list[m.Event] = []
        failed = False
        batch: list[m.Action] = []
        for act in (*actions, None):
            if isinstance(act, m.KERNEL_ACTIONS):
                if not failed:
                    batch.append(act)
                continue
            if batch:
                done = self.run_kernel(batch)
                outcomes.extend(done)
                failed = any(isinstance(o, m.ActionFailed) for o in done)
                batch = []
            if act is not None:
                self._bookkeeping(act)
        return outcomes

    def _bookkeeping(self, act: m.Action) -> None:
        if isinstance(act, m.PauseMonitoring):
            self.prober.pause(act.path)
        elif isinstance(act, m.ResumeMonitoring):
            self.prober.resume(act.path)
        elif isinstance(act, m.RebindProbe):
            try:
                self.prober.rebind(act.path)
            except OSError as exc:  # gone again already: the next link.returned retries
                log.error("probe rebind failed path=%d error=%r", act.path, exc.strerror)
        elif isinstance(act, m.StartTimer):
            self.timers.start(act.name, act.deadline_ns)
        elif isinstance(act, m.CancelTimer):
            self.timers.cancel(act.name)
        elif isinstance(act, m.SendNotice):
            try:
                self.prober.send_notice(act.path, act.active, act.seen)
            except OSError as exc:  # the path's NIC may be gone: the notice is best effort
                log.error("peer notice failed path=%d error=%r", act.path, exc.strerror)
        else:
            raise TypeError(f"no handler for action {act.type}")

# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Local fleet helper: after the recap, one line per task with its wall time (slowest first).

Enabled by scripts/localfleet's PLAYBOOK_ENV (ANSIBLE_CALLBACKS_ENABLED=task_timer) so the demo's
and the e2e tests' playbook logs show where a run spends its time.
"""

from __future__ import annotations

import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: task_timer
type: aggregate
short_description: Wall time of every task, printed after the recap (local fleet helper)
description:
  - Prints the ten slowest tasks of the run and the total.
requirements:
  - enable in the callbacks_enabled setting
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._start = time.monotonic()
        self._current: tuple[str, float] | None = None
        self._times: list[tuple[float, str]] = []

    def _close(self) -> None:
        if self._current:
            name, started = self._current
            self._times.append((time.monotonic() - started, name))
            self._current = None

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._close()
        self._current = (task.get_name(), time.monotonic())

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def v2_playbook_on_stats(self, stats):
        self._close()
        total = time.monotonic() - self._start
        self._display.display(f"TASK TIMES (total {total:.1f}s, slowest first)")
        for seconds, name in sorted(self._times, reverse=True)[:15]:
            self._display.display(f"  {seconds:7.2f}s  {name}")

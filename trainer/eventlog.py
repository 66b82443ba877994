"""Transitional: the names of `trainer.run.events` and `trainer.run.linefile` under the module
they had before issue 10, for the daemon and its tests until they import those modules."""
from __future__ import annotations

import os  # noqa: F401  (tests/test_faults_daemon.py patches eventlog.os.write)

from trainer.run.events import EVENT_BACKLOG, EventLog, last_seq, parse_event, read_tail  # noqa: F401
from trainer.run.linefile import AppendFile  # noqa: F401

"""Run at the start of every Python process a test starts (conftest puts this directory on its
``PYTHONPATH``): it connects to 127.0.0.1 only (``loopback_guard``)."""

from __future__ import annotations

import os

from loopback_guard import OUTSIDE_LOG, guard_this_process

if os.environ.get(OUTSIDE_LOG):
    guard_this_process(os.environ[OUTSIDE_LOG])

"""leadline's own ids: a prefix, then time-ordered random text, so ids sort by creation."""

from __future__ import annotations

import os
import time


def new_id(prefix: str) -> str:
    """``lead_0195f3c2a1b7e4...``: 12 hex digits of milliseconds, then 64 random bits."""
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{os.urandom(8).hex()}"

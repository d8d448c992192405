"""The migration drill (bench/drill_migration.py) on SQLite and PostgreSQL, asserted.

200 leads with threads open on Meta; a cutover to Twilio while old leads keep writing, new leads write on
the Twilio number and leadline opens conversations with numbers it has never seen. Every thread in flight
finishes on Meta, every new conversation after the start goes out on Twilio, and every message leadline
accepted reaches a provider exactly once. The drill is the bench script itself, loaded from its file, so
the figures in bench/README.md and this test cannot drift apart.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

DRILL_PATH = Path(__file__).parents[2] / "bench" / "drill_migration.py"


@pytest.fixture(scope="module")
def drill() -> ModuleType:
    spec = importlib.util.spec_from_file_location("drill_migration", DRILL_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


async def test_migration_drill_moves_200_live_threads_to_twilio_with_none_lost_or_duplicated(
    database_url: str, drill: ModuleType
) -> None:
    report = await drill.run_drill(database_url, leads=200, ticks=120)

    assert report.accepted == 200 + 120 * 3
    assert (report.lost, report.duplicated, report.inbound_lost) == ([], [], [])
    assert report.delivered == report.accepted
    assert report.inbound_injected == 1 + 200 + 120 * 2
    # Threads in flight finish where they are; new conversations start on the new channel.
    assert report.old_replies == 200 + 120
    assert report.old_replies_off_meta == []
    assert report.twilio_replies_off_twilio == []
    assert report.new_before_start + report.new_during_switch + report.new_after_start == 120
    assert report.new_before_start > 0 and report.new_after_start > 0
    assert (report.new_before_start_off_meta, report.new_after_start_off_twilio) == ([], [])
    # Leadline's counts agree with what each provider received.
    for channel in ("meta", "twilio"):
        assert report.traffic[channel]["out"] == report.traffic[channel]["provider"]
    # The drain: every old lead's window on Meta closes 24 h after its last message; then none is left,
    # the old leads' next conversations go to Twilio, and the cutover finishes without --force.
    assert report.draining_at_start >= 200
    assert report.time_to_drained is not None
    assert report.time_to_drained.total_seconds() == pytest.approx(24 * 3600, abs=120)
    assert report.draining_at_drain_time == 0
    assert report.old_leads_routed_to_twilio_after_drain == 200
    assert report.finished_without_force
    assert report.ok
    print(drill.render(report))

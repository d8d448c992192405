"""The inbound writer's own ceiling: what the writer process does per batch, without HTTP.

    .venv/bin/python bench/inbound_writer.py [--events 8000] [--batch 64]

Translates signed Meta text webhooks (unique senders and message ids, as bench/inbound.py posts them),
then records them with the writer's work (``pipeline.ingest.RecordInbound``) on the SQLite file driven
directly (``store.db.DirectSQLite``), one transaction per batch, as a writer process does. Prints events
per second and CPU per event.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from inbound import bench_config, signed_requests

from leadline.bootstrap import build_services
from leadline.config import config_from_mapping
from leadline.pipeline.ingest import RecordInbound
from leadline.providers.base import RawRequest
from leadline.store.db import DirectSQLite


async def main(events: int, batch: int) -> None:
    with tempfile.TemporaryDirectory(prefix="leadline-bench-") as directory:
        url = f"sqlite+aiosqlite:///{directory}/bench.db"
        services = build_services(config_from_mapping(bench_config(url)))
        await services.start()
        translator = services.translators["meta"]
        translated = [
            translator.translate(
                RawRequest("POST", "/webhooks/meta", "", {k.lower(): v for k, v in headers.items()}, body, "")
            ).events
            for body, headers in signed_requests(events, "writer")
        ]
        record = RecordInbound(())
        database = DirectSQLite(url)
        started, cpu = time.perf_counter(), time.process_time()
        for start in range(0, events, batch):
            with database.transaction() as conn:
                await record(conn, translated[start : start + batch])
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        database.close()
        await services.close()
    print(f"inbound writer, {events} events, batches of {batch}, SQLite synchronous=FULL")
    print(f"events/s {events / wall:,.0f}   CPU per event {cpu / events * 1e6:,.0f} µs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=64)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.events, arguments.batch))

"""A second leadline server process for the routing tests: serves the app for the configuration given as
JSON in ``argv[1]`` on a free port, prints its URL on one line, and serves until terminated."""

from __future__ import annotations

import asyncio
import json
import socket
import sys

import uvicorn

from leadline.api.app import create_app
from leadline.config import config_from_mapping


async def main() -> None:
    config = config_from_mapping(json.loads(sys.argv[1]))
    app = create_app(config, run_worker=False, migrate=False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # uvicorn's own start-up, as conftest.running_app waits for it
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    await task  # until SIGTERM


if __name__ == "__main__":
    asyncio.run(main())

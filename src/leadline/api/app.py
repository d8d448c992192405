"""The FastAPI application: webhooks, ``/v1``, metrics and health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from leadline.api import cutover, messages, routing, v1, webhooks
from leadline.api import failover as failover_api
from leadline.api import templates as templates_api
from leadline.api.errors import install_error_handlers
from leadline.bootstrap import Services, build_services
from leadline.config import LeadlineConfig
from leadline.routing.failover import refresh_gauges


def create_app(
    config: LeadlineConfig,
    *,
    run_worker: bool | None = None,
    migrate: bool = True,
    services: Services | None = None,
) -> FastAPI:
    """``run_worker`` defaults to the configuration's ``worker.enabled``; ``migrate`` brings the schema up
    to date at start-up (harmless when it already is)."""
    with_worker = config.settings.worker.enabled if run_worker is None else run_worker

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = services or build_services(config)
        await running.start(migrate=migrate)
        app.state.services = running
        stop = asyncio.Event()
        worker_task = None
        if with_worker:
            worker = running.new_worker()
            running.ingestor.on_commit = worker.wake
            running.wake_worker = worker.wake
            worker_task = asyncio.create_task(worker.run_forever(stop), name="leadline-worker")
        try:
            yield
        finally:
            stop.set()
            if worker_task is not None:
                await worker_task
            await running.close()

    app = FastAPI(
        title="leadline",
        summary="One seam between a CRM and its WhatsApp providers.",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    # The two hot paths first (webhooks in, messages out): a request is matched against the routers in order.
    app.include_router(webhooks.router)
    app.include_router(messages.router)
    app.include_router(v1.router)
    app.include_router(templates_api.router)
    app.include_router(cutover.router)
    app.include_router(routing.router)
    app.include_router(failover_api.router)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics(request: Request) -> Response:
        running: Services = request.app.state.services
        async with running.db.read() as conn:
            await refresh_gauges(conn, running.config)  # circuits and held messages: every process's view
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app

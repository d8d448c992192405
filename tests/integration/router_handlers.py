"""A handler given to the router by dotted path (``router_handlers:needs_file``) in test_router.py.

It stands for a handler whose dependency is sometimes down: it fails until a file exists, so the
state it depends on is outside this process, as a real dependency's would be.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from leadline.pipeline.router import HandlerContext


class DependencyDown(RuntimeError):
    pass


async def needs_file(ctx: HandlerContext, *, path: str, tag: str) -> None:
    if not await asyncio.to_thread(Path(path).exists):
        raise DependencyDown(f"{path} is not there yet")
    await ctx.tag(tag)

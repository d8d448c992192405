"""The ``media_files`` rows: one per media item of an inbound message, ``pending`` until fetched.

Recorded with the message, in the webhook's transaction, together with one ``fetch_media`` job per item;
the unique ``(message_id, position)`` and the job's dedupe key keep both to one per item.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.domain.ids import new_id
from leadline.domain.messages import MediaRef
from leadline.store import jobs as job_store
from leadline.store.db import insert_ignoring_duplicates
from leadline.store.tables import media_files, messages

FETCH_MEDIA_JOB = "fetch_media"

_MIME_TYPE = re.compile(r'[A-Za-z0-9][\w.+-]*/[\w.+-]+( *; *[\w.+-]+=[\w.+"-]+)*')


def clean_mime_type(value: str | None) -> str | None:
    """A content type fit to store (the column holds 128 characters) and to serve as a header; else None."""
    if value is None or len(value) > 128 or not _MIME_TYPE.fullmatch(value.strip()):
        return None
    return value.strip()


class MediaState(enum.StrEnum):
    PENDING = "pending"
    STORED = "stored"
    FAILED = "failed"


async def record_inbound_media(
    conn: AsyncConnection, items: Sequence[tuple[str, Sequence[MediaRef]]], *, now: datetime
) -> None:
    """Note the media of new messages (``(message_id, refs)`` pairs) and enqueue a fetch for each item."""
    rows = [
        {
            "id": new_id("med"),
            "message_id": message_id,
            "position": position,
            "provider_ref": ref.ref,
            "mime_type": clean_mime_type(ref.mime_type),
            "filename": ref.filename,
            "state": MediaState.PENDING.value,
            "created_at": now,
        }
        for message_id, refs in items
        for position, ref in enumerate(refs)
    ]
    inserted = set(
        await insert_ignoring_duplicates(
            conn, media_files, rows, conflict_columns=["message_id", "position"], returning="id"
        )
    )
    await job_store.enqueue(
        conn,
        [
            job_store.new_job(
                FETCH_MEDIA_JOB,
                {"media_id": row["id"]},
                now=now,
                dedupe_key=f"media:{row['message_id']}:{row['position']}",
            )
            for row in rows
            if row["id"] in inserted
        ],
    )


async def get_media(conn: AsyncConnection, media_id: str) -> dict[str, Any] | None:
    """The item's row, with the ``channel`` its message came in on."""
    row = (
        await conn.execute(
            select(media_files, messages.c.channel)
            .join(messages, messages.c.id == media_files.c.message_id)
            .where(media_files.c.id == media_id)
        )
    ).first()
    return None if row is None else dict(row._mapping)


async def mark_stored(
    conn: AsyncConnection,
    media_id: str,
    *,
    storage_key: str,
    size: int,
    sha256: str,
    mime_type: str | None,
    now: datetime,
) -> None:
    await conn.execute(
        update(media_files)
        .where(media_files.c.id == media_id, media_files.c.state == MediaState.PENDING.value)
        .values(
            state=MediaState.STORED.value,
            storage_key=storage_key,
            size=size,
            sha256=sha256,
            mime_type=clean_mime_type(mime_type),
            error=None,
            stored_at=now,
        )
    )


async def mark_failed(conn: AsyncConnection, media_id: str, *, error: str) -> None:
    """End a pending item as failed; ``error`` starts with a stable code (``too_large: ...``)."""
    await conn.execute(
        update(media_files)
        .where(media_files.c.id == media_id, media_files.c.state == MediaState.PENDING.value)
        .values(state=MediaState.FAILED.value, error=error[:2000])
    )

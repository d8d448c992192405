"""The template library's repository: templates by (name, language) and their state on each channel.

The tables are in :mod:`leadline.store.template_tables`; their unique constraints keep one template
per name and language and one mapping per template and channel, whichever process writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.store.db import insert_ignoring_duplicates
from leadline.store.template_tables import template_channels, templates
from leadline.templates.definitions import TemplateDefinition
from leadline.templates.providers import APPROVED, RemoteTemplate


@dataclass(frozen=True, slots=True)
class ChannelState:
    channel: str
    provider: str
    status: str
    provider_template_id: str | None
    provider_name: str | None
    rejection_reason: str | None
    category: str | None
    definition: TemplateDefinition | None
    """What was submitted (or found) on the channel; sends render this one."""
    fingerprint: str | None
    submitted_at: datetime | None
    synced_at: datetime | None
    status_at: datetime


@dataclass(frozen=True, slots=True)
class StoredTemplate:
    id: int
    name: str
    language: str
    category: str
    definition: TemplateDefinition
    fingerprint: str
    source: str
    created_at: datetime
    updated_at: datetime
    channels: dict[str, ChannelState] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.name} ({self.language})"


async def define_template(
    conn: AsyncConnection, definition: TemplateDefinition, *, source: str, now: datetime
) -> tuple[int, bool]:
    """Create or update the template of ``definition``'s name and language; returns (id, changed)."""
    fingerprint = definition.fingerprint()
    row = {
        "name": definition.name,
        "language": definition.language,
        "category": definition.category.value,
        "definition": definition.to_json(),
        "fingerprint": fingerprint,
        "source": source,
        "created_at": now,
        "updated_at": now,
    }
    inserted = await insert_ignoring_duplicates(
        conn, templates, [row], conflict_columns=["name", "language"], returning="id"
    )
    if inserted:
        return int(inserted[0]), True
    existing = (
        await conn.execute(
            select(templates.c.id, templates.c.fingerprint).where(
                templates.c.name == definition.name, templates.c.language == definition.language
            )
        )
    ).one()
    if existing.fingerprint == fingerprint:
        return int(existing.id), False
    await conn.execute(
        update(templates)
        .where(templates.c.id == existing.id)
        .values(
            category=row["category"],
            definition=row["definition"],
            fingerprint=fingerprint,
            source=source,
            updated_at=now,
        )
    )
    return int(existing.id), True


async def get_template(conn: AsyncConnection, name: str, language: str) -> StoredTemplate | None:
    found = await _load(conn, and_(templates.c.name == name, templates.c.language == language))
    return found[0] if found else None


async def list_templates(conn: AsyncConnection, names: Sequence[str] | None = None) -> list[StoredTemplate]:
    """All templates (or those of ``names``, any language), by name and language, with their channels."""
    return await _load(conn, templates.c.name.in_(list(names)) if names is not None else None)


async def _load(conn: AsyncConnection, where: Any) -> list[StoredTemplate]:
    query = select(templates).order_by(templates.c.name, templates.c.language)
    if where is not None:
        query = query.where(where)
    rows = list(await conn.execute(query))
    if not rows:
        return []
    states: dict[int, dict[str, ChannelState]] = {row.id: {} for row in rows}
    channel_rows = await conn.execute(
        select(template_channels)
        .where(template_channels.c.template_id.in_(list(states)))
        .order_by(template_channels.c.channel)
    )
    for state in channel_rows:
        states[state.template_id][state.channel] = ChannelState(
            channel=state.channel,
            provider=state.provider,
            status=state.status,
            provider_template_id=state.provider_template_id,
            provider_name=state.provider_name,
            rejection_reason=state.rejection_reason,
            category=state.category,
            definition=TemplateDefinition.model_validate(state.definition) if state.definition else None,
            fingerprint=state.fingerprint,
            submitted_at=state.submitted_at,
            synced_at=state.synced_at,
            status_at=state.status_at,
        )
    return [
        StoredTemplate(
            id=row.id,
            name=row.name,
            language=row.language,
            category=row.category,
            definition=TemplateDefinition.model_validate(row.definition),
            fingerprint=row.fingerprint,
            source=row.source,
            created_at=row.created_at,
            updated_at=row.updated_at,
            channels=states[row.id],
        )
        for row in rows
    ]


async def record_channel_state(
    conn: AsyncConnection,
    template_id: int,
    *,
    channel: str,
    provider: str,
    remote: RemoteTemplate,
    now: datetime,
    submitted: TemplateDefinition | None = None,
) -> None:
    """Keep what a provider said of a template on ``channel`` (after a submission, or found by a sync).

    ``submitted`` is the definition just sent there; without it the definition already kept stays,
    or, for a template seen on the channel for the first time, the one the provider describes.
    """
    values: dict[str, Any] = {
        "provider": provider,
        "provider_template_id": remote.provider_template_id,
        "provider_name": remote.name,
        "status": remote.status,
        "rejection_reason": remote.rejection_reason,
        "category": remote.category,
        "synced_at": now,
        "status_at": now,
    }
    if submitted is not None:
        values |= {"definition": submitted.to_json(), "fingerprint": submitted.fingerprint(), "submitted_at": now}
    first = dict(values)
    if submitted is None and remote.definition is not None:
        first |= {"definition": remote.definition.to_json(), "fingerprint": remote.definition.fingerprint()}
    inserted = await insert_ignoring_duplicates(
        conn,
        template_channels,
        [{"template_id": template_id, "channel": channel, **first}],
        conflict_columns=["template_id", "channel"],
        returning="id",
    )
    if not inserted:
        await conn.execute(
            update(template_channels)
            .where(template_channels.c.template_id == template_id, template_channels.c.channel == channel)
            .values(**values)
        )


async def apply_status_report(
    conn: AsyncConnection,
    *,
    channels: Sequence[str],
    provider_template_id: str | None,
    name: str | None,
    language: str | None,
    status: str,
    rejection_reason: str | None,
    category: str | None,
    at: datetime,
) -> int:
    """Apply a provider's report of a template's new status to the given channels; returns the rows changed.

    The template is matched by provider id, or by name and language; a report older than what is
    kept (a webhook delivered after a sync that saw a newer state) changes nothing.
    """
    matches = []
    if provider_template_id:
        matches.append(template_channels.c.provider_template_id == provider_template_id)
    if name and language:
        matches.append(
            template_channels.c.template_id.in_(
                select(templates.c.id).where(templates.c.name == name, templates.c.language == language)
            )
        )
    if not matches or not channels:
        return 0
    values: dict[str, Any] = {"status": status, "rejection_reason": rejection_reason, "status_at": at}
    if category:
        values["category"] = category
    result = await conn.execute(
        update(template_channels)
        .where(
            template_channels.c.channel.in_(list(channels)),
            or_(*matches),
            template_channels.c.status_at <= at,
        )
        .values(**values)
    )
    return int(result.rowcount)


async def channels_with_approved(conn: AsyncConnection, name: str, language: str) -> set[str]:
    """The channels where the template may be sent now."""
    rows = await conn.execute(
        select(template_channels.c.channel)
        .join(templates, templates.c.id == template_channels.c.template_id)
        .where(templates.c.name == name, templates.c.language == language, template_channels.c.status == APPROVED)
    )
    return set(rows.scalars())

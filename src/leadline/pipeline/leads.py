"""One lead per person: find or create leads from the identities a contact is known by."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import and_, bindparam, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.domain.ids import new_id
from leadline.domain.phones import InvalidPhoneNumber, match_key, to_e164
from leadline.store.db import insert_ignoring_duplicates
from leadline.store.tables import lead_identities, leads

Identity = tuple[str, str]


def identities_of(provider: str, phone: str | None, provider_user_id: str | None = None) -> list[Identity]:
    """The keys one person is recognised by: their number's match key, and any provider user id.

    At least one of the two is given (a customer whose number WhatsApp withholds has only a user id)."""
    keys: list[Identity] = [] if phone is None else [("phone", match_key(phone))]
    if provider_user_id and provider_user_id.lstrip("+") != (phone or "").lstrip("+"):
        try:
            as_phone = match_key(to_e164(provider_user_id))
        except InvalidPhoneNumber:
            keys.append(("user", f"{provider}:{provider_user_id}"))
        else:
            if ("phone", as_phone) not in keys:
                keys.append(("phone", as_phone))
    return keys


@dataclass(frozen=True, slots=True)
class Contact:
    key: str
    """The caller's name for this contact (a message id, a request number): results are keyed by it."""
    identities: list[Identity]
    phone: str | None
    """None when the provider withholds the number: the lead is known by its user id until it shows."""
    display_name: str | None = None


@cache
def _identities_query(kinds: tuple[str, ...]) -> Any:
    # Built once per set of kinds (phone, user), the values bound at execution: building the statement
    # for every message cost more than running it. (kind, value) pairs as the unique index is ordered, so
    # every lookup is an index search.
    c = lead_identities.c
    matches = (
        and_(c.kind == kind, c.value.in_(bindparam(f"values_{i}", expanding=True))) for i, kind in enumerate(kinds)
    )
    return select(c.kind, c.value, c.lead_id).where(or_(*matches))


async def _lead_ids_by_identity(conn: AsyncConnection, keys: set[Identity]) -> dict[Identity, str]:
    if not keys:
        return {}
    by_kind: dict[str, set[str]] = {}
    for kind, value in keys:
        by_kind.setdefault(kind, set()).add(value)
    kinds = tuple(sorted(by_kind))
    rows = await conn.execute(
        _identities_query(kinds), {f"values_{i}": sorted(by_kind[kind]) for i, kind in enumerate(kinds)}
    )
    return {(kind, value): lead_id for kind, value, lead_id in rows if (kind, value) in keys}


_FILL_PHONE = (
    update(leads).where(leads.c.id == bindparam("lead"), leads.c.phone.is_(None)).values(phone=bindparam("shown"))
)


async def known_lead_id(conn: AsyncConnection, contact: Contact) -> str | None:
    """The lead the contact is already known as, if any (a read: nothing is created)."""
    known = await _lead_ids_by_identity(conn, set(contact.identities))
    return next((known[key] for key in contact.identities if key in known), None)


async def upsert_contacts(
    conn: AsyncConnection, contacts: Sequence[Contact], now: datetime
) -> tuple[dict[str, str], set[str]]:
    """The lead id of each contact, creating leads for people never seen; and the ids created.

    Safe against other processes doing the same at the same moment: the identity's unique constraint
    decides which new lead wins, and the loser's empty lead row is removed again.
    """
    all_keys = {key for contact in contacts for key in contact.identities}
    known = await _lead_ids_by_identity(conn, all_keys)

    # One new lead per unknown person, even if they appear several times in this batch.
    candidates: dict[Identity, dict[str, Any]] = {}
    for contact in contacts:
        if any(key in known for key in contact.identities):
            continue
        primary = contact.identities[0]
        if primary not in candidates:
            candidates[primary] = {
                "id": new_id("lead"),
                "phone": contact.phone,
                "display_name": contact.display_name,
                "tags": [],
                "created_at": now,
            }
    if candidates:
        await conn.execute(leads.insert(), list(candidates.values()))
        await insert_ignoring_duplicates(
            conn,
            lead_identities,
            sorted(
                ({"lead_id": row["id"], "kind": k, "value": v} for (k, v), row in candidates.items()),
                key=lambda r: (r["kind"], r["value"]),
            ),
            conflict_columns=["kind", "value"],
        )
        known.update(await _lead_ids_by_identity(conn, set(candidates)))
        losers = [row["id"] for key, row in candidates.items() if known[key] != row["id"]]
        if losers:
            await conn.execute(delete(leads).where(leads.c.id.in_(losers)))
    created = {row["id"] for key, row in candidates.items() if known.get(key) == row["id"]}

    lead_by_contact: dict[str, str] = {}
    missing: dict[Identity, str] = {}
    phone_shown: dict[str, str] = {}
    for contact in contacts:
        lead_id = next(known[key] for key in contact.identities if key in known)
        lead_by_contact[contact.key] = lead_id
        for key in contact.identities:
            if key not in known:
                missing.setdefault(key, lead_id)
                if key[0] == "phone" and contact.phone is not None:
                    phone_shown.setdefault(lead_id, contact.phone)
    await insert_ignoring_duplicates(
        conn,
        lead_identities,
        [{"lead_id": lead_id, "kind": k, "value": v} for (k, v), lead_id in sorted(missing.items())],
        conflict_columns=["kind", "value"],
    )
    if phone_shown:
        # A lead first known by its user id alone (the number withheld) gets its number once it shows.
        await conn.execute(
            _FILL_PHONE, [{"lead": lead_id, "shown": phone} for lead_id, phone in sorted(phone_shown.items())]
        )
    return lead_by_contact, created

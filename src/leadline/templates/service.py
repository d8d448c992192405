"""What the outbound send path asks of the template library: a template ready for one channel.

The send path calls :func:`prepare_template_send` in its transaction and hands ``.send`` to the
channel's :class:`~leadline.providers.base.MessagingProvider`; ``.rendered_text`` goes on the timeline.
Routing asks :func:`channels_with_approved` where a template may go.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from leadline.config import ChannelConfig
from leadline.providers.base import TemplateSend
from leadline.templates import store
from leadline.templates.errors import (
    InvalidTemplateVariables,
    TemplateError,
    TemplateNotApproved,
    TemplateNotFound,
)
from leadline.templates.providers import APPROVED, NOT_SUBMITTED
from leadline.templates.render import bind_variables, render_send, render_text

__all__ = [
    "InvalidTemplateVariables",
    "PreparedTemplate",
    "TemplateError",
    "TemplateNotApproved",
    "TemplateNotFound",
    "channels_with_approved",
    "prepare_template_send",
]


@dataclass(frozen=True, slots=True)
class PreparedTemplate:
    send: TemplateSend
    """The template in the channel's provider's terms."""
    rendered_text: str
    """What the customer reads (header, body and footer with the values filled in), for the timeline."""
    template_id: int
    channel: str


async def prepare_template_send(
    conn: AsyncConnection,
    *,
    channel: ChannelConfig,
    name: str,
    language: str,
    variables: Mapping[str, str] | Sequence[str],
) -> PreparedTemplate:
    """Check that the template may be sent on ``channel`` and render it with ``variables``.

    Raises :class:`TemplateNotFound` (``template_not_found``, 404), :class:`TemplateNotApproved`
    (``template_not_approved``, 409) when it is not APPROVED on that channel, and
    :class:`InvalidTemplateVariables` (``invalid_template_variables``, 422) naming each bad value.
    """
    template = await store.get_template(conn, name, language)
    if template is None:
        raise TemplateNotFound(f"no template {name!r} in language {language!r}")
    state = template.channels.get(channel.name)
    status = state.status if state else NOT_SUBMITTED
    if state is None or state.status != APPROVED or not state.provider_template_id:
        where = "it was never submitted there" if state is None else f"its status there is {status}"
        if state is not None and state.rejection_reason:
            where += f" ({state.rejection_reason})"
        raise TemplateNotApproved(
            f"template {template.key} is not approved on channel {channel.name!r}: {where}",
            channel=channel.name,
            status=status,
        )
    # The version the provider approved, which may be older than the file.
    definition = state.definition or template.definition
    values = bind_variables(definition, variables)
    send = render_send(channel.provider, definition, values, provider_template_id=state.provider_template_id)
    return PreparedTemplate(
        send=send, rendered_text=render_text(definition, values), template_id=template.id, channel=channel.name
    )


async def channels_with_approved(conn: AsyncConnection, name: str, language: str) -> set[str]:
    """The names of the channels where the template is APPROVED, for routing to prefer one of them."""
    return await store.channels_with_approved(conn, name, language)

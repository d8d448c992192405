"""Meta's webhook signature: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``."""

from __future__ import annotations

import hashlib
import hmac

_PREFIX = "sha256="


def meta_signature(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``body``, keyed with the app secret."""
    return _PREFIX + hmac.digest(app_secret.encode(), body, hashlib.sha256).hex()


def signature_matches(app_secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the signature of the exact ``body`` bytes, compared in constant time."""
    if header is None:
        return False
    expected = meta_signature(app_secret, body).encode()
    # Bytes, not str: compare_digest refuses non-ASCII strings, and a header can carry anything.
    given = header.strip().lower().encode("utf-8", "replace")
    return hmac.compare_digest(expected, given)

"""``X-Twilio-Signature``: computing and checking it with the Twilio SDK's own validator.

Twilio asks integrators to use its SDK rather than reimplement the scheme (the set of signed
parameters changes without notice), so this module only adapts leadline's form parameters to
:class:`twilio.request_validator.RequestValidator`. Two behaviours of that validator matter here:

- It reads a repeated name's values through ``getall`` only when the mapping has one; a plain
  ``dict`` holds one value and a list of pairs is not understood at all. :class:`_FormParams` gives
  it every value. (It signs each *distinct* value once, sorted; that is the SDK's behaviour and is
  kept as is.)
- :func:`signature_matches` accepts a signature computed over the URL without its port or with the
  scheme's default port added (``:443``/``:80``), because Twilio is inconsistent about which one it
  signs. :func:`twilio_signature` signs the URL exactly as given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from twilio.request_validator import RequestValidator

FormParams = Mapping[str, str] | Iterable[tuple[str, str]]
"""Form parameters as a mapping (one value per name) or as pairs (repeated names allowed)."""


class _FormParams(dict[str, str]):
    """A name -> first value mapping that also answers ``getall`` with every value, in order."""

    def __init__(self, params: FormParams):
        super().__init__()
        self._all: dict[str, list[str]] = {}
        pairs = params.items() if isinstance(params, Mapping) else params
        for name, value in pairs:
            self._all.setdefault(name, []).append(value)
            self.setdefault(name, value)

    def getall(self, name: str) -> list[str]:
        return list(self._all[name])


def twilio_signature(auth_token: str, url: str, params: FormParams) -> str:
    """The ``X-Twilio-Signature`` Twilio would send for a form POST of ``params`` to ``url``."""
    signature: str = RequestValidator(auth_token).compute_signature(url, _FormParams(params))
    return signature


def signature_matches(auth_token: str, url: str, params: FormParams, header: str | None) -> bool:
    """Whether ``header`` is a valid signature of a form POST of ``params`` to ``url``.

    ``url`` must be the URL Twilio called as Twilio saw it (scheme, host, path and query
    byte-identical), not the one a reverse proxy forwarded to. A missing or empty header never
    matches.
    """
    if not header:
        return False
    return bool(RequestValidator(auth_token).validate(url, _FormParams(params), header))

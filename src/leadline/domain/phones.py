"""Phone numbers: parsing what providers send into E.164, and the key that recognises one person.

WhatsApp ids and provider addresses spell the same number several ways (``whatsapp:+55...``,
digits without ``+``, Brazil's mobile ninth digit present or absent, Mexico's and Argentina's
legacy mobile ``1``/``9``). A lead is matched on :func:`match_key`, which folds those spellings
together, so one person never becomes two leads.
"""

from __future__ import annotations

import phonenumbers


class InvalidPhoneNumber(ValueError):
    """The text is not a phone number in international form."""


_PREFIXES = ("whatsapp:", "tel:")


def to_e164(raw: str) -> str:
    """Parse a provider's spelling of a number into E.164 (``+5215512345678``).

    Numbers arrive in international form from every provider, with or without ``+``; a number
    without a country code cannot be placed and is rejected.
    """
    text = raw.strip()
    for prefix in _PREFIXES:
        if text.lower().startswith(prefix):
            text = text[len(prefix) :].strip()
    if not text:
        raise InvalidPhoneNumber("empty phone number")
    if not text.startswith("+"):
        text = "+" + text
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhoneNumber(f"not a phone number: {raw!r}") from exc
    if not phonenumbers.is_possible_number(parsed):
        raise InvalidPhoneNumber(f"not a possible phone number: {raw!r}")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def match_key(e164: str) -> str:
    """The key under which spellings of one person's number coincide.

    - Brazil (+55): mobiles gained a leading 9 in 2012-2016; WhatsApp ids of older accounts still
      omit it. The key drops it: ``+55 11 9xxxx-xxxx`` and ``+55 11 xxxx-xxxx`` share a key.
    - Mexico (+52) and Argentina (+54): WhatsApp ids carry the old mobile prefix ``1`` / ``9``
      after the country code (``521…``, ``549…``); the key drops it.
    """
    digits = e164.lstrip("+")
    if digits.startswith("55") and len(digits) == 13 and digits[4] == "9":
        return "+" + digits[:4] + digits[5:]
    if digits.startswith("521") and len(digits) == 13:
        return "+52" + digits[3:]
    if digits.startswith("549") and len(digits) == 13:
        return "+54" + digits[3:]
    return "+" + digits

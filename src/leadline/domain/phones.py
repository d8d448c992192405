"""Phone numbers: parsing what providers send into E.164, and the key that recognises one person.

WhatsApp ids and provider addresses spell the same number several ways (``whatsapp:+55...``,
digits without ``+``, Brazil's mobile ninth digit present or absent, Mexico's and Argentina's
legacy mobile ``1``/``9``). A lead is matched on :func:`match_key`, which folds those spellings
together, so one person never becomes two leads.
"""

from __future__ import annotations

import re

import phonenumbers


class InvalidPhoneNumber(ValueError):
    """The text is not a phone number in international form."""


_PREFIXES = ("whatsapp:", "tel:")
_SEPARATORS = re.compile(r"[\s().-]")
_DIGITS = re.compile(r"[1-9][0-9]{6,14}")


def to_e164(raw: str) -> str:
    """Parse a provider's spelling of a number into E.164 (``+5215512345678``).

    Numbers arrive in international form from every provider, with or without ``+``, sometimes with
    spaces or dashes from a person. The country code must be a real one (phonenumbers knows them), but
    the rest is not checked against numbering plans: WhatsApp ids keep forms the plans have dropped
    (Mexico's ``+521…``), and such a customer must still reach us.
    """
    text = raw.strip()
    for prefix in _PREFIXES:
        if text.lower().startswith(prefix):
            text = text[len(prefix) :].strip()
    digits = _SEPARATORS.sub("", text).removeprefix("+")
    if not _DIGITS.fullmatch(digits):
        raise InvalidPhoneNumber(f"not a phone number in international form: {raw!r}")
    if not _has_country_code(digits):
        raise InvalidPhoneNumber(f"unknown country code in {raw!r}")
    return "+" + digits


def _has_country_code(digits: str) -> bool:
    # Country calling codes are prefix-free and one to three digits long; phonenumbers' table of them
    # is what its own parser consults (its full parse costs more than the rest of a webhook's translation).
    return any(int(digits[:length]) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE for length in (1, 2, 3))


def match_key(e164: str) -> str:
    """The key under which spellings of one person's number coincide.

    - Brazil (+55): mobiles gained a leading 9 in 2012-2016; WhatsApp ids of older accounts still
      omit it. The key drops it: ``+55 11 9xxxx-xxxx`` and ``+55 11 xxxx-xxxx`` share a key. Only
      numbers whose old form was a mobile (starting 6-9) fold, so a landline (2-5) stays its own person.
    - Mexico (+52) and Argentina (+54): WhatsApp ids carry the old mobile prefix ``1`` / ``9``
      after the country code (``521…``, ``549…``); the key drops it.
    """
    digits = e164.lstrip("+")
    if digits.startswith("55") and len(digits) == 13 and digits[4] == "9" and digits[5] in "6789":
        return "+" + digits[:4] + digits[5:]
    if digits.startswith("521") and len(digits) == 13:
        return "+52" + digits[3:]
    if digits.startswith("549") and len(digits) == 13:
        return "+54" + digits[3:]
    return "+" + digits

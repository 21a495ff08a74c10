"""Strict decimal-string money: parsed to integer minor units, never a float.

The regex only admits ASCII digits, no sign, no exponent, no whitespace and no
more fraction digits than the currency has, so "1e2", " 5 ", "1.234" (EUR) and
non-ASCII digits such as "١٢٣" are all rejected instead of being coerced.
"""

from __future__ import annotations

import re

# ISO 4217 codes accepted at the edge, with their minor-unit exponent.
_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(
        ["AED", "ARS", "AUD", "BDT", "BGN", "BRL", "CAD", "CHF", "CNY", "COP", "CZK", "DKK", "EGP", "EUR", "GBP", "GEL", "GHS", "HKD", "HUF", "IDR", "ILS", "INR", "KES", "KZT", "MAD", "MXN", "MYR", "NGN", "NOK", "NZD", "PEN", "PHP", "PKR", "PLN", "QAR", "RON", "RSD", "RUB", "SAR", "SEK", "SGD", "THB", "TRY", "TWD", "UAH", "USD", "UZS", "VND", "ZAR"],
        2,
    ),
    **dict.fromkeys(["CLP", "ISK", "JPY", "KRW", "PYG", "UGX", "VND", "XAF", "XOF"], 0),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
}
_CURRENCY = re.compile(r"[A-Z]{3}")
MAX_MINOR = 2**63 - 1  # PostgreSQL bigint


class InvalidAmount(ValueError):
    """The amount or currency is not acceptable. The message is safe to return."""


def is_currency(value: object) -> bool:
    return isinstance(value, str) and _CURRENCY.fullmatch(value) is not None


def is_known_currency(value: object) -> bool:
    return is_currency(value) and value in _EXPONENTS


def exponent(currency: str) -> int:
    return _EXPONENTS.get(currency, 2)


def _pattern(exp: int) -> re.Pattern[str]:
    fraction = rf"(\.[0-9]{{1,{exp}}})?" if exp > 0 else ""
    # re.ASCII so nothing but 0-9 can ever match; fullmatch so a trailing
    # newline is not silently accepted the way "$" would.
    return re.compile(rf"(0|[1-9][0-9]{{0,17}}){fraction}", re.ASCII)


_PATTERNS: dict[int, re.Pattern[str]] = {exp: _pattern(exp) for exp in (0, 2, 3)}


def parse_amount(value: object, currency: str) -> int:
    """Parse a strict decimal string into minor units of `currency`."""
    if not is_currency(currency):
        raise InvalidAmount("currency must be three upper-case letters")
    if not isinstance(value, str):
        raise InvalidAmount("amount must be a decimal string")
    exp = exponent(currency)
    if _PATTERNS[exp].fullmatch(value) is None:
        raise InvalidAmount(f"amount must be a decimal string with at most {exp} decimals")
    whole, _, frac = value.partition(".")
    # Shift the decimal point textually: exact, with no float ever involved.
    minor = int(whole + frac.ljust(exp, "0"))
    if minor > MAX_MINOR:
        raise InvalidAmount("amount is too large")
    return minor


def format_minor(minor: int, currency: str) -> str:
    """Format minor units back to a string with exactly the currency's decimals."""
    exp = exponent(currency)
    if exp == 0:
        return str(minor)
    sign = "-" if minor < 0 else ""
    digits = str(abs(minor)).rjust(exp + 1, "0")
    return f"{sign}{digits[:-exp]}.{digits[-exp:]}"

"""Strict decimal-string money: parsed to integer minor units, never a float.

The regex only admits ASCII digits, no sign, no exponent, no whitespace and no
more fraction digits than the currency has, so "1e2", " 5 ", "1.234" (EUR) and
non-ASCII digits such as "١٢٣" are all rejected instead of being coerced, each
with a message that says which of these it broke (amount_problem).
"""

from __future__ import annotations

import re

# ISO 4217 codes accepted at the edge, with their minor-unit exponent.
_EXPONENTS: dict[str, int] = {
    "AED": 2,
    "ARS": 2,
    "AUD": 2,
    "BDT": 2,
    "BGN": 2,
    "BRL": 2,
    "CAD": 2,
    "CHF": 2,
    "CNY": 2,
    "COP": 2,
    "CZK": 2,
    "DKK": 2,
    "EGP": 2,
    "EUR": 2,
    "GBP": 2,
    "GEL": 2,
    "GHS": 2,
    "HKD": 2,
    "HUF": 2,
    "IDR": 2,
    "ILS": 2,
    "INR": 2,
    "KES": 2,
    "KZT": 2,
    "MAD": 2,
    "MXN": 2,
    "MYR": 2,
    "NGN": 2,
    "NOK": 2,
    "NZD": 2,
    "PEN": 2,
    "PHP": 2,
    "PKR": 2,
    "PLN": 2,
    "QAR": 2,
    "RON": 2,
    "RSD": 2,
    "RUB": 2,
    "SAR": 2,
    "SEK": 2,
    "SGD": 2,
    "THB": 2,
    "TRY": 2,
    "TWD": 2,
    "UAH": 2,
    "USD": 2,
    "UZS": 2,
    "ZAR": 2,
    "CLP": 0,
    "ISK": 0,
    "JPY": 0,
    "KRW": 0,
    "PYG": 0,
    "UGX": 0,
    "VND": 0,
    "XAF": 0,
    "XOF": 0,
    "BHD": 3,
    "IQD": 3,
    "JOD": 3,
    "KWD": 3,
    "LYD": 3,
    "OMR": 3,
    "TND": 3,
}
_CURRENCY = re.compile(r"[A-Z]{3}")
MAX_MINOR = 2**63 - 1  # PostgreSQL bigint


class InvalidAmount(ValueError):
    """The amount or currency is not acceptable. The message is safe to return."""


def is_currency(value: object) -> bool:
    return isinstance(value, str) and _CURRENCY.fullmatch(value) is not None


def known_currencies() -> list[str]:
    return sorted(_EXPONENTS)


def currencies_by_exponent() -> dict[int, list[str]]:
    grouped: dict[int, list[str]] = {}
    for currency in known_currencies():
        grouped.setdefault(_EXPONENTS[currency], []).append(currency)
    return grouped


def amount_pattern(exp: int) -> str:
    """A regular expression (ECMA 262 and Python alike) for amounts greater than zero
    in a currency of exponent `exp`, for the API's description. parse_amount is the
    rule; this pattern is that rule, with at most 18 digits in all (so it always fits
    a bigint) instead of the exact bigint bound, which no pattern can say."""
    whole = rf"[1-9][0-9]{{0,{17 - exp}}}" + (rf"(\.[0-9]{{1,{exp}}})?" if exp else "")
    fractions = [f"0{{{k}}}[1-9][0-9]{{0,{exp - 1 - k}}}" for k in range(exp)]
    below_one = [rf"0\.({'|'.join(fractions)})"] if exp else []
    return "^(" + "|".join([whole, *below_one]) + ")$"


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
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_EXPONENT = re.compile(r"[+-]?[0-9.]+[eE][+-]?[0-9]+", re.ASCII)
_EXAMPLE = {0: "500", 2: "10.50", 3: "1.250"}


def parse_amount(value: object, currency: str) -> int:
    """Parse a strict decimal string into minor units of `currency`."""
    if not is_currency(currency):
        raise InvalidAmount("currency must be three upper-case letters")
    if not isinstance(value, str):
        raise InvalidAmount("amount must be a decimal string")
    exp = exponent(currency)
    if _PATTERNS[exp].fullmatch(value) is None:
        raise InvalidAmount(amount_problem(value, currency))
    whole, _, frac = value.partition(".")
    # Shift the decimal point textually: exact, with no float ever involved.
    minor = int(whole + frac.ljust(exp, "0"))
    if minor > MAX_MINOR:
        raise InvalidAmount("amount is too large")
    return minor


def amount_problem(value: str, currency: str) -> str:
    """What is wrong with an amount the pattern refused, in words a client can act
    on. The message never repeats the input: it may be anything."""
    exp = exponent(currency)
    if any(c.isdigit() and not c.isascii() for c in value):
        return "amount must be written with the ASCII digits 0-9"
    if value != value.strip() or any(c.isspace() for c in value):
        return "amount must not contain spaces or line breaks"
    if _EXPONENT.fullmatch(value):
        return "amount must be a plain decimal string such as 100, without an exponent"
    if value[:1] in ("+", "-"):
        return "amount must not carry a sign"
    whole, dot, frac = value.partition(".")
    if _DIGITS.fullmatch(whole) and (not dot or _DIGITS.fullmatch(frac)):
        if len(whole) > 1 and whole.startswith("0"):
            return "amount must not have leading zeros"
        if len(frac) > exp:
            return f"amount must have at most {exp} decimals for {currency}"
        return "amount is too large"
    return f"amount must be a decimal string such as {_EXAMPLE[exp]}, with at most {exp} decimals"


def format_minor(minor: int, currency: str) -> str:
    """Format minor units back to a string with exactly the currency's decimals."""
    exp = exponent(currency)
    if exp == 0:
        return str(minor)
    sign = "-" if minor < 0 else ""
    digits = str(abs(minor)).rjust(exp + 1, "0")
    return f"{sign}{digits[:-exp]}.{digits[-exp:]}"

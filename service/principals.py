"""Who is calling: a person signed in through the issuer (or break-glass), with roles.

A person's action on money is theirs: every decision is recorded with the
authenticated subject (issuer, subject, email), never a typed name. Roles:

- `viewer`: reads only (every person has it);
- `resolver`: proposes manual-check decisions, cancels and replays;
- `approver`: approves what another person proposed;
- `admin`: circuits, roles and API keys.

`admin` holds every role. Authentication (OIDC tokens and sessions) is
service/identity.py's; this module is the vocabulary the routes share.
"""

from __future__ import annotations

from dataclasses import dataclass

VIEWER, RESOLVER, APPROVER, ADMIN = "viewer", "resolver", "approver", "admin"
ROLES = (VIEWER, RESOLVER, APPROVER, ADMIN)


@dataclass(frozen=True)
class Principal:
    """An authenticated person. `via`: "oidc" or "break_glass"."""

    issuer: str
    subject: str
    email: str | None
    roles: frozenset[str]
    via: str = "oidc"

    @property
    def actor(self) -> str:
        """The audit trail's actor: who, unambiguously (the issuer's subject), and
        readably (the email); e.g. `person:ana@example.com (sub 1234 at https://idp)`."""
        readable = self.email or self.subject
        return f"person:{readable} (sub {self.subject} at {self.issuer})"

    def may(self, role: str) -> bool:
        return role == VIEWER or role in self.roles or ADMIN in self.roles

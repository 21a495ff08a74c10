"""A local OpenID issuer for the sandbox, the tests and `make sandbox`:
oidc-provider-mock (a Flask app), with four people and JWT access tokens.

The people, each `<name>@example.com` with a verified email, and their groups
(mapped to roles by GROUP_ROLES, the service's OIDC_GROUP_ROLES):

    ana  payments-resolvers   resolver
    bob  payments-approvers   approver
    vic  (none)               viewer
    ada  payments-admins      admin

Its login form signs in whoever is named (a button per person above, or any
name typed, who is then a viewer). The mock's own access tokens are opaque;
here they are RFC 9068 JWTs signed with the issuer's key, carrying the groups,
as a real issuer's are when configured for an API. `--key FILE` signs with a
fixed key (a JWK with its private part), so that the tests can make tokens the
issuer could have made: expired, for another audience.

    python -m sandbox.issuer serve [--port 9400] [--key FILE]
    python -m sandbox.issuer token ana [--issuer http://127.0.0.1:9400]   # an access token
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

CLIENT_ID = "payment-console"
# The mock takes any secret, and requires one: its code grant has no public clients.
CLIENT_SECRET = "dev-console-secret"  # noqa: S105 - sandbox credential
DEFAULT_PORT = 9400
GROUP_ROLES = "payments-resolvers=resolver,payments-approvers=approver,payments-admins=admin"
PEOPLE: dict[str, list[str]] = {
    "ana": ["payments-resolvers"],
    "bob": ["payments-approvers"],
    "vic": [],
    "ada": ["payments-admins"],
}
TOKEN_LIFETIME_S = 3600
_CALLBACK = "http://127.0.0.1/callback"  # never reached: the code is read off the redirect


def _claims(name: str, groups: list[str]) -> dict[str, object]:
    email = f"{name}@example.com"
    return {"email": email, "email_verified": True, "name": name.title(), "groups": groups}


def build_app(private_jwk: dict[str, Any] | None = None) -> Any:
    """The mock issuer's Flask app, its access tokens JWTs, signed with `private_jwk`
    when given (else the mock's own random key)."""
    import flask
    import oidc_provider_mock
    from authlib.jose import JsonWebKey

    app = flask.Flask("oidc_provider_mock")  # its templates
    app.config["OAUTH2_ACCESS_TOKEN_GENERATOR"] = _jwt_access_token
    people = [oidc_provider_mock.User(sub=n, claims=_claims(n, g)) for n, g in PEOPLE.items()]
    oidc_provider_mock.init_app(app, user_claims=people)
    app.secret_key = secrets.token_bytes(16)
    if private_jwk is not None:
        key = JsonWebKey.import_key(private_jwk)

        @app.before_request
        def _fixed_key() -> None:  # after the mock's own hook, which set its storage
            flask.g.oidc_provider_mock_storage.jwk = key

    return app


def _jwt_access_token(client: Any, grant_type: str, user: Any, scope: str) -> str:
    """An RFC 9068 access token for `user`, signed with the issuer's key (in a request)."""
    import flask

    private = flask.g.oidc_provider_mock_storage.jwk.as_dict(is_private=True)
    issuer = flask.request.host_url.rstrip("/")
    claims = {**user.claims, "client_id": client.get_client_id(), "scope": scope}
    return mint(private, issuer, user.sub, client.get_client_id(), claims)


def mint(
    private_jwk: dict[str, Any],
    issuer: str,
    subject: str,
    audience: str = CLIENT_ID,
    claims: dict[str, Any] | None = None,
    lifetime_s: int = TOKEN_LIFETIME_S,
) -> str:
    """An access token as this issuer makes them (a person of PEOPLE gets their
    claims): for tools, and for tests that need one expired or for another audience."""
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    now = int(time.time())
    known = _claims(subject, PEOPLE[subject]) if subject in PEOPLE else {}
    body = {**known, **(claims or {}), "iss": issuer, "sub": subject, "aud": audience}
    body |= {"iat": now, "exp": now + lifetime_s, "jti": secrets.token_hex(12)}
    header = {"alg": "RS256", "typ": "at+jwt"}
    if "kid" in private_jwk:
        header["kid"] = private_jwk["kid"]
    return jwt.encode(header, body, RSAKey.import_key(private_jwk))


def new_private_jwk() -> dict[str, Any]:
    """A fresh RSA key as a JWK, private part included, with a key id."""
    from joserfc.jwk import RSAKey

    key = RSAKey.generate_key(2048, private=True)
    return {**key.as_dict(private=True), "kid": key.thumbprint()}


@contextmanager
def running(port: int, private_jwk: dict[str, Any] | None = None) -> Iterator[str]:
    """The issuer on 127.0.0.1:`port` in a thread for as long as the block; its URL."""
    import werkzeug.serving  # the dev extra's, as flask is

    server = werkzeug.serving.make_server("127.0.0.1", port, build_app(private_jwk), threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="issuer", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


def tokens(issuer: str, person: str, client_id: str = CLIENT_ID) -> dict[str, Any]:
    """Sign `person` in at the issuer (its form, by code flow) and return its tokens:
    what a browser and the console would do, done by hand."""
    with httpx.Client(timeout=10) as http:
        metadata = http.get(f"{issuer}/.well-known/openid-configuration").json()
        state = secrets.token_urlsafe(8)
        query = {
            "client_id": client_id,
            "redirect_uri": _CALLBACK,
            "response_type": "code",
            "scope": "openid email profile",
            "state": state,
        }
        chose = http.post(metadata["authorization_endpoint"], params=query, data={"sub": person})
        sent_back = parse_qs(urlsplit(chose.headers["location"]).query)
        assert sent_back["state"] == [state], sent_back
        body = {
            "grant_type": "authorization_code",
            "code": sent_back["code"][0],
            "redirect_uri": _CALLBACK,
        }
        secret = (client_id, CLIENT_SECRET)
        answer = http.post(metadata["token_endpoint"], data=body, auth=secret)
        answer.raise_for_status()
        return answer.json()  # type: ignore[no-any-return]


def access_token(issuer: str, person: str, client_id: str = CLIENT_ID) -> str:
    return str(tokens(issuer, person, client_id)["access_token"])


def serve(port: int, key_file: Path | None) -> None:
    import werkzeug.serving

    private = json.loads(key_file.read_text()) if key_file else None
    server = werkzeug.serving.make_server("127.0.0.1", port, build_app(private), threaded=True)
    print(f"issuer http://127.0.0.1:{server.server_port} (people: {', '.join(PEOPLE)})", flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.issuer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serving = sub.add_parser("serve", help="run the issuer")
    serving.add_argument("--port", type=int, default=DEFAULT_PORT)
    serving.add_argument("--key", type=Path, help="a private JWK (JSON) to sign with")
    minting = sub.add_parser("token", help="sign a person in and print an access token")
    minting.add_argument("person")
    minting.add_argument("--issuer", default=f"http://127.0.0.1:{DEFAULT_PORT}")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port, args.key)
    else:
        print(access_token(args.issuer, args.person))
    return 0


if __name__ == "__main__":
    sys.exit(main())

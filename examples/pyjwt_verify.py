#!/usr/bin/env python3
"""Checks an authd access token the way a Python service would: with PyJWT and authd's JWKS.

    python3 examples/pyjwt_verify.py JWKS_URL TOKEN [ISSUER [AUDIENCE]]

Prints `accepted sub=...` (exit 0) or `refused: reason` (exit 1). Needs PyJWT 2.13 or later
(examples/requirements.txt pins it): from there on `jwt.decode` with a PyJWK verifies only with
the JWK's own algorithm (GHSA-jq35-7prp-9v3f), and PyJWKClient keeps its cached set when a fetch
fails.
"""

import sys

import jwt


def verify(client: jwt.PyJWKClient, token: str, issuer: str, audience: str) -> dict:
    # authd signs its challenge tokens (the second login step) with the same keys; only the
    # header's typ (and aud) tells them from access tokens.
    if str(jwt.get_unverified_header(token).get("typ", "")).lower() != "at+jwt":
        raise jwt.InvalidTokenError("not an access token")
    # By kid. A kid not in the cached set makes it fetch the set again, at most once per
    # cooldown_duration (30 s), so made-up kids cannot make it flood authd.
    key = client.get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        key,  # a PyJWK: only its own algorithm verifies, so HS256 or none cannot sneak in
        algorithms=["ES256", "EdDSA"],
        audience=audience,
        issuer=issuer,
        options={"require": ["exp", "iss", "aud", "sub"]},
    )


def main() -> int:
    if len(sys.argv) not in (3, 4, 5):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    jwks_url, token, issuer, audience = (sys.argv[1:] + ["authd", "authd"])[:4]
    # A long-running service keeps one client: it caches the set for `lifespan` seconds (choose
    # authd's keys.refresh_secs, the max-age of its JWKS answer).
    client = jwt.PyJWKClient(jwks_url, cache_jwk_set=True, lifespan=60, timeout=5)
    try:
        claims = verify(client, token, issuer, audience)
    except jwt.PyJWTError as error:  # every refusal, and a JWKS that cannot be fetched
        print(f"refused: {error}")
        return 1
    print(f"accepted sub={claims['sub']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Local credentials: what Cognito and API Gateway's API keys are when deployed.

One signing key for end-user tokens and one backend API key, made the first
time and kept in `.pushflow/local-auth.json` (git-ignored, mode 0600), so a
token minted by `pushflow local token` stays valid across `pushflow local
serve` restarts. Tokens look like Cognito ID tokens (`sub`, `iss`, `aud`,
`token_use`, `cognito:username`) but are signed with HS256 and the local
secret: Cognito signs with RS256 keys from its JWKS, which needs a key pair
and a key server for no gain on a laptop.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from pushflow_local.template import REPO_ROOT

AUTH_PATH = REPO_ROOT / ".pushflow" / "local-auth.json"
# Deployed, the issuer is the user pool's URL and the audience its app client id.
ISSUER = "pushflow-local"
CLIENT_ID = "pushflow-local-app"
ALGORITHM = "HS256"
TOKEN_USES = ("id", "access")


class InvalidToken(Exception):
    """The token is missing, malformed, expired, or not signed by the local key."""


@dataclass(frozen=True)
class LocalCredentials:
    signing_key: str
    api_key: str
    api_key_id: str

    def mint_token(self, sub: str, ttl: int = 3600, **claims: Any) -> str:
        """An ID token for user `sub`, valid for `ttl` seconds; `claims` add or override."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "sub": sub,
            "iss": ISSUER,
            "aud": CLIENT_ID,
            "token_use": "id",
            "cognito:username": sub,
            "auth_time": now,
            "iat": now,
            "exp": now + ttl,
            **claims,
        }
        return jwt.encode(payload, self.signing_key, algorithm=ALGORITHM)

    def verify_token(self, token: str) -> dict[str, Any]:
        """The token's claims once signature, `exp`, `iss` and `token_use` check out."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.signing_key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["exp", "iss", "sub", "token_use"], "verify_aud": False},
            )
        except jwt.PyJWTError as error:
            raise InvalidToken(str(error)) from None
        use = claims.get("token_use")
        if use not in TOKEN_USES:
            raise InvalidToken(f"token_use must be one of {', '.join(TOKEN_USES)}")
        # As Cognito's authorizer: an ID token names the app client in `aud`,
        # an access token in `client_id`.
        client = claims.get("client_id") if use == "access" else claims.get("aud")
        if client != CLIENT_ID:
            raise InvalidToken("the token was issued for another app client")
        return claims


def load_credentials(path: Path = AUTH_PATH) -> LocalCredentials:
    """The persisted credentials, created (readable by the owner only) on first use."""
    if not path.exists():
        _create(path)
    stored = json.loads(path.read_text())
    return LocalCredentials(stored["signing_key"], stored["api_key"], stored["api_key_id"])


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    credentials = {
        "signing_key": secrets.token_urlsafe(48),
        "api_key": secrets.token_urlsafe(30),
        "api_key_id": f"local{secrets.token_hex(5)}",
    }
    # mkstemp makes the file 0600; linking it into place never overwrites a
    # file another process created meanwhile (that one wins, and is reused).
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".local-auth-")
    try:
        with os.fdopen(descriptor, "w") as stream:
            json.dump(credentials, stream, indent=2)
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        os.unlink(temporary)


def mint_token(sub: str, ttl: int = 3600, **claims: Any) -> str:
    return load_credentials().mint_token(sub, ttl, **claims)


def verify_token(token: str) -> dict[str, Any]:
    return load_credentials().verify_token(token)

"""Who may see the dashboard and act on the queue, and how a form proves it is ours.

- Authentication is a bearer token (``--token`` / ``JOBQUEUE_DASHBOARD_TOKEN``)
  or HTTP basic auth (``JOBQUEUE_DASHBOARD_USER`` and ``_PASSWORD``). A browser
  given ``?token=…`` once gets a cookie holding an HMAC of it (never the
  token), and is redirected to the same page without it.
- Without either, the dashboard answers only on a loopback address: a request
  that reached a non-loopback socket is refused, whatever started the server
  (``jobqueue dashboard`` refuses to bind one at all).
- Every POST carries a CSRF field, an HMAC of the caller's identity under a
  per-process secret; a cross-site form cannot know it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass, field

from jobqueue.errors import ConfigError

COOKIE = "jobqueue_dashboard"
TOKEN_ENV = "JOBQUEUE_DASHBOARD_TOKEN"
USER_ENV = "JOBQUEUE_DASHBOARD_USER"
PASSWORD_ENV = "JOBQUEUE_DASHBOARD_PASSWORD"


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Auth:
    """The dashboard's credentials: a token, a user and password, or none."""

    token: str | None = None
    user: str | None = None
    password: str | None = None
    #: Signs cookies and CSRF fields; new per process (a restart logs browsers out).
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def __post_init__(self) -> None:
        if (self.user is None) != (self.password is None):
            raise ConfigError(f"basic auth needs both {USER_ENV} and {PASSWORD_ENV}")
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("the dashboard token must be at least 16 characters")

    @classmethod
    def from_env(cls, token: str | None = None) -> Auth:
        return cls(token=token or os.environ.get(TOKEN_ENV) or None,
                   user=os.environ.get(USER_ENV) or None,
                   password=os.environ.get(PASSWORD_ENV) or None)

    @property
    def required(self) -> bool:
        return self.token is not None or self.user is not None

    def _mac(self, *parts: str) -> str:
        return hmac.new(self.secret, "\0".join(parts).encode(), hashlib.sha256).hexdigest()

    def cookie_value(self) -> str:
        assert self.token is not None
        return self._mac("cookie", self.token)

    def identify(self, authorization: str | None, cookie: str | None) -> str | None:
        """Who the request is (``token`` or the basic user), or None if it is nobody."""
        scheme, _, value = (authorization or "").partition(" ")
        if self.token is not None:
            if scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), self.token):
                return "token"
            if cookie and hmac.compare_digest(cookie, self.cookie_value()):
                return "token"
        if self.user is not None and self.password is not None and scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            if hmac.compare_digest(user, self.user) and \
                    hmac.compare_digest(password, self.password):
                return user
        return None

    def csrf(self, identity: str) -> str:
        return self._mac("csrf", identity)

    def csrf_ok(self, identity: str, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value, self.csrf(identity))

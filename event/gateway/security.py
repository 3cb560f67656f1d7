"""The gateway's safety rules: where it may listen, who may call it, and what a browser may do there.

- A bind address other than loopback needs a token; without one the gateway refuses to start.
- With a token, every route but the login page and static files needs ``Authorization: Bearer <token>``
  or the session cookie that the login page sets (an HMAC of the token, never the token itself);
  both are compared in constant time (:func:`hmac.compare_digest`).
- A state-changing request (anything but GET/HEAD/OPTIONS) coming from a browser must be same-origin
  (``Origin`` and ``Sec-Fetch-Site``) and carry the page's CSRF token in ``X-CSRF-Token`` (the sign-in
  and sign-out forms, which cannot send a header and touch no broker state, only the first).
- Pages are sent with ``Referrer-Policy: same-origin``: a browser then sends the page's real ``Origin``
  with a same-origin form, and no referrer to any other site. Programs
  (curl, an HTTP client) send neither ``Origin`` nor cookies and need only the bearer token.
- Bound to loopback, only loopback ``Host`` names are answered, so a DNS-rebinding page cannot talk
  to the gateway through the user's browser.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from event.errors import ConfigurationError

SESSION_COOKIE = "event_session"
CSRF_HEADER = "x-csrf-token"
LOOPBACK_NAMES = ("localhost",)
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
PUBLIC_PATHS = ("/login", "/logout", "/static/", "/favicon.ico", "/healthz")
# Forms of the sign-in and sign-out pages: a form cannot send the X-CSRF-Token header, so these two are
# guarded by the Origin and Sec-Fetch-Site checks alone (they change nothing on the broker).
FORM_PATHS = ("/login", "/logout")
SECURITY_HEADERS = (
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    # same-origin, not no-referrer: under no-referrer Chromium sends ``Origin: null`` with a form's POST,
    # which the origin check must refuse, and nobody could sign in. Other sites still get no referrer.
    (b"referrer-policy", b"same-origin"),
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this machine only."""
    bare = host.strip("[]").lower()
    if bare in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def parse_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) as a host and a port number."""
    host, sep, port_text = bind.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigurationError(f"--bind {bind!r} must look like HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port_text)


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token: anyone who reaches the port could publish."""
    if token is None and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve on {host} without a token: anyone who can reach it could publish events "
            f"and delete dead messages. Put a secret in a file and pass --token-file FILE (clients then "
            f"send 'Authorization: Bearer <secret>'), or bind to 127.0.0.1"
        )


def read_token(path: str) -> str:
    """The token in the file at ``path`` (surrounding white space dropped)."""
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the token file {path!r}: {exc.strerror}") from exc
    if len(token) < 16:
        raise ConfigurationError(f"the token in {path!r} is too short: use at least 16 characters")
    return token


@dataclass(frozen=True)
class Secrets:
    """The token (None: no authentication, loopback only) and this process's CSRF secret."""

    token: str | None
    csrf_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    @property
    def csrf_token(self) -> str:
        """The token the dashboard sends back with every change (not guessable from outside)."""
        return hmac.new(self.csrf_key, b"event-dashboard-csrf", hashlib.sha256).hexdigest()

    def session_value(self) -> str:
        """The session cookie's value: derived from the token, so the cookie never holds it."""
        assert self.token is not None
        return hmac.new(self.token.encode(), b"event-dashboard-session", hashlib.sha256).hexdigest()

    def token_matches(self, given: str) -> bool:
        """Whether ``given`` is the token (constant time)."""
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def authorised(self, headers: Headers, cookies: dict[str, str]) -> bool:
        """Whether the request carries the bearer token or a valid session cookie."""
        if self.token is None:
            return True
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(credentials.strip()):
            return True
        session = cookies.get(SESSION_COOKIE, "")
        return bool(session) and hmac.compare_digest(session.encode(), self.session_value().encode())

    def csrf_matches(self, given: str) -> bool:
        """Whether ``given`` is this process's CSRF token (constant time)."""
        return hmac.compare_digest(given.encode(), self.csrf_token.encode())


def _cookies(headers: Headers) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in headers.get("cookie", "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            found[name] = value
    return found


class Guard:
    """ASGI middleware applying the rules of this module to every HTTP request."""

    def __init__(self, app: ASGIApp, *, keys: Secrets, loopback_only: bool) -> None:
        self.app = app
        self.keys = keys
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope, headers: Headers) -> Response | None:
        host = headers.get("host", "")
        hostname = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        if self.loopback_only and not is_loopback(hostname):
            return _error(421, f"this gateway answers only to a loopback host name, not {hostname!r}")
        path: str = scope["path"]
        method: str = scope["method"]
        cookies = _cookies(headers)
        public = path.startswith(PUBLIC_PATHS) or (path == "/" and method in SAFE_METHODS)
        if not public and not self.keys.authorised(headers, cookies):
            response = _error(401, "this gateway needs 'Authorization: Bearer <token>' (see --token-file)")
            response.headers["www-authenticate"] = "Bearer"
            return response
        if method in SAFE_METHODS:
            return None
        origin = headers.get("origin")
        fetch_site = headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            return _error(403, f"cross-site request refused (Sec-Fetch-Site: {fetch_site})")
        if origin is not None and origin != f"{scope.get('scheme', 'http')}://{host}":
            return _error(403, f"cross-origin request from {origin!r} refused")
        from_browser = origin is not None or fetch_site is not None or bool(cookies)
        if (
            from_browser
            and path not in FORM_PATHS
            and not self.keys.csrf_matches(headers.get(CSRF_HEADER, ""))
        ):
            return _error(403, "a browser's change needs the dashboard's CSRF token in X-CSRF-Token")
        return None


def _error(status: int, reason: str) -> Response:
    return JSONResponse({"error": reason}, status_code=status)

"""Headers on every response that tell a browser what it must not do with it.

- ``X-Content-Type-Options: nosniff``: a report or an error is never run as a script or a
  page whatever its bytes look like;
- ``X-Frame-Options: DENY`` (and ``frame-ancestors 'none'`` in the pages' CSP,
  :mod:`jdt_service.web`): no other site may show the pages in a frame (clickjacking: a page
  elsewhere laying the Score button or the API-key form under its own);
- ``Referrer-Policy: no-referrer``: the service's addresses (which may name a job or a set)
  are not sent to any other site.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SECURITY_HEADERS", "SecurityHeadersMiddleware"]

SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


class SecurityHeadersMiddleware:
    """Pure ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)

"""
The admin dashboard: C{GET /admin} and its login, logout, numbers and
actions, for principals with the admin role.

The page is rendered on the server with L{twisted.web.template} (part of
Twisted, escapes everything it is given, nothing to install) from the same
objects the JSON API answers from; a little plain JavaScript
(C{static/admin.js}) draws the call-rate chart from C{GET /admin/stats} and
sends the actions (C{data-post} buttons) with the CSRF token.  Every asset
is a file of this package: the Content-Security-Policy admits nothing else,
no inline script or style.

A browser logs in by posting a principal's credential to C{/admin/login}
(checked by the L{Guard} as an C{Authorization} header would be, within the
same failure budgets) and gets the cookie of a server-side
L{BrowserSessions} entry: C{HttpOnly; Secure; SameSite=Strict}.  Browsers
keep a C{Secure} cookie on C{http://127.0.0.1} and C{http://localhost}
(trustworthy origins) but not on plain HTTP elsewhere: serve the gateway
with TLS when the dashboard is used from another machine.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from twisted.web.iweb import IRequest
from twisted.web.template import Tag, flattenString

from mcpgateway.errors import BadRequest, Forbidden, LimitReached, NotFound, Unauthorized
from mcpgateway.http.guard import COOKIE, cookie_value
from mcpgateway.lib.redact import SECRET_VALUES
from mcpgateway.observe.auditquery import query_from_params
from mcpgateway.observe.callstats import CallStats
from mcpgateway.observe.logs import logger, now_iso
from mcpgateway.observe.security import RecentSecurityEvents
from mcpgateway.policy.auth import Principal
from mcpgateway.policy.browser import BrowserSession, BrowserSessions
from mcpgateway.policy.budgets import BudgetPolicy

if TYPE_CHECKING:
    from mcpgateway.http.rest import GatewayApp

__all__ = ["CSP", "AdminPages"]

log = logger("mcpgateway.admin")

#: The dashboard's Content-Security-Policy: its own script, style and fetches only.
CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    b"form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
STATIC = Path(__file__).parent / "static"
_ASSETS = {
    "admin.js": b"text/javascript; charset=utf-8",
    "admin.css": b"text/css; charset=utf-8",
    "favicon.svg": b"image/svg+xml",
}
_AUDIT_FILTERS = ("principal", "service", "tool", "outcome", "since", "until", "limit")
#: Largest login form accepted (bytes).
_MAX_FORM = 8192


class _Tags:
    """
    L{twisted.web.template.tags} for HTML5 (C{tags.main} too), where a
    keyword C{data_x} is the attribute C{data-x} and C{class_} is C{class}.
    """

    def __getattr__(self, name: str) -> Callable[..., Tag]:
        def build(*children: Any, **attributes: Any) -> Tag:
            named = {key.rstrip("_").replace("_", "-"): value for key, value in attributes.items()}
            return Tag(name)(*children, **named)

        return build


tags = _Tags()


class AdminPages:
    """
    The dashboard's routes, as plain methods L{GatewayApp}'s routes call.

    @ivar app: The REST API it reads from (gateway, guard, audit, budgets).
    @ivar browsers: The logged-in browsers.
    @ivar stats: The rolling call numbers (one of the app's call observers).
    @ivar events: The recent security events.
    """

    def __init__(
        self, app: GatewayApp, browsers: BrowserSessions, stats: CallStats, events: RecentSecurityEvents
    ) -> None:
        self.app = app
        self.browsers = browsers
        self.stats = stats
        self.events = events

    # -- login -----------------------------------------------------------------

    async def page(self, request: IRequest) -> bytes:
        """
        C{GET /admin}: the dashboard for a logged-in admin, else the login form.
        """
        _html_headers(request)
        browser = self.app.guard.browser(request)
        if browser is None:
            return await _render(request, 200, _login_page(""))
        if not browser.principal.admin:
            return await _render(request, 403, _login_page("the dashboard is for admin principals only"))
        await self.app.guard.limit(request, "default", f"principal:{browser.principal.name}", browser.principal)
        return await _render(request, 200, await self._dashboard(request, browser))

    async def login(self, request: IRequest) -> bytes:
        """
        C{POST /admin/login}: check the form's credential (C{user} and
        C{password}, or C{token}); an admin gets the session cookie and a
        redirect to C{/admin}, anyone else the form again with why.
        """
        _html_headers(request)
        if not self.app.guard.same_origin(request):
            self.app.security("csrf_refused", request, None, origin=_origin(request))
            return await _render(request, 403, _login_page("refused: the login must come from this gateway's page"))
        form = _form(request)
        user, password, token = (form.get(key, "") for key in ("user", "password", "token"))
        if token:
            header = b"Bearer " + token.encode("utf-8")
        elif user and password:
            header = b"Basic " + base64.b64encode(f"{user}:{password}".encode())
        else:
            return await _render(request, 400, _login_page("give a user name and password, or a token"))
        try:
            principal = await self.app.guard.admit(request, "default", header)
        except Unauthorized:
            # No WWW-Authenticate: a browser would open its own login dialog.
            request.responseHeaders.removeHeader(b"WWW-Authenticate")
            return await _render(request, 401, _login_page("wrong user name, password or token"))
        except LimitReached as error:
            request.setHeader(b"Retry-After", b"%d" % max(1, round(error.retry_after or 1)))
            return await _render(request, 429, _login_page("too many attempts; try again later"))
        if not principal.admin:
            self.app.security("forbidden", request, principal)
            return await _render(request, 403, _login_page("the dashboard is for admin principals only"))
        old = cookie_value(request)
        if old is not None:
            self.browsers.end(old)
        session_id, _ = self.browsers.create(principal)
        _set_cookie(request, session_id.encode(), int(self.browsers.lifetime))
        request.setResponseCode(303)
        request.setHeader(b"Location", b"/admin")
        return b""

    def logout(self, request: IRequest, principal: Principal) -> dict[str, Any]:
        """
        C{POST /admin/logout} (admitted by the guard, CSRF checked): end the
        browser session and clear the cookie.
        """
        session_id = cookie_value(request)
        ended = session_id is not None and self.browsers.end(session_id)
        _set_cookie(request, b"", 0)
        return {"message": "logged out" if ended else "no browser session", "principal": principal.name}

    # -- JSON ------------------------------------------------------------------------

    def status(self, principal: Principal) -> dict[str, Any]:
        """
        C{GET /admin/stats}: each service's state and counters, the rolling
        call numbers, the recent failed calls and security events.

        @raise Forbidden: For a principal that is no admin.
        """
        _admin_only(principal)
        gateway = self.app.gateway
        status: dict[str, Any] = SECRET_VALUES.value(
            {
                "time": now_iso(gateway.clock.seconds()),
                "services": gateway.service_status(),
                "calls": self.stats.snapshot(sorted(gateway.services)),
                "errors": self.stats.recent_errors(),
                "security_events": self.events.recent(),
            }
        )
        return status

    def restart(self, principal: Principal, name: str) -> dict[str, Any]:
        """
        C{POST /admin/services/<name>/restart}: see L{Gateway.restart_service}.

        @raise Forbidden: For a principal that is no admin.
        """
        _admin_only(principal)
        return self.app.gateway.restart_service(name)

    def asset(self, request: IRequest, name: str) -> bytes:
        """
        C{GET /admin/static/<name>}: one of the dashboard's own files.

        @raise NotFound: For any other name.
        """
        kind = _ASSETS.get(name)
        if kind is None:
            raise NotFound(f"no dashboard asset {name!r}", "not_found")
        data = (STATIC / name).read_bytes()  # small, and cached by the OS after the first read
        request.setHeader(b"Content-Type", kind)
        request.setHeader(b"Content-Length", b"%d" % len(data))
        return data

    # -- the page -------------------------------------------------------------------

    async def _dashboard(self, request: IRequest, browser: BrowserSession) -> Tag:
        gateway = self.app.gateway
        now = gateway.clock.seconds()
        services = gateway.service_status()
        stats = self.stats.snapshot(sorted(services))
        sessions = [(session.id, session) for session in gateway.sessions.visible_to(browser.principal)]
        header = tags.header(
            tags.h1("mcpgateway"),
            tags.span("signed in as ", tags.b(browser.principal.name, id="principal")),
            *_drain_badge(self.app.drain.draining, self.app.drain.describe()),
            # Actions of the whole process: one button each (data-post: the route).
            tags.nav(
                tags.button(
                    "Drain",
                    data_post="/admin/drain",
                    data_confirm="Drain this process? New sessions go elsewhere; live ones finish.",
                    data_then="/admin",
                ),
                tags.button("Log out", data_post="/admin/logout", data_then="/admin"),
                class_="actions",
            ),
        )
        service_rows = [
            tags.tr(
                tags.td(name),
                tags.td(view["state"], class_=f"state {view['state']}"),
                *(tags.td(_text(view[key])) for key in ("children", "pool", "spawns", "restarts", "crashes")),
                tags.td(_text(view["start_failures"])),
                tags.td(f"{view['backoff']:g} s" if view["backoff"] else "-"),
                tags.td(_text(view["tools"])),
                tags.td(_text(view["last_error"]), class_="error"),
                tags.td(
                    tags.button(
                        "Restart",
                        data_post=f"/admin/services/{name}/restart",
                        data_confirm=f"Restart every child of {name}?",
                    )
                ),
                data_service=name,
            )
            for name, view in services.items()
        ]
        call_rows = [
            tags.tr(
                tags.td(tags.span(class_="swatch"), name),
                *(
                    tags.td(_stat(entry[key], unit), data_stat=f"{name}.{key}")
                    for key, unit in (("rate", "/s"), ("p50_ms", " ms"), ("p99_ms", " ms"), ("error_rate", ""))
                ),
            )
            for name, entry in stats["services"].items()
        ]
        session_rows = [
            tags.tr(
                tags.td(session_id, class_="mono"),
                tags.td(session.owner),
                tags.td(", ".join(sorted(session.children)) or "-"),
                tags.td(_duration(now - session.created_at)),
                tags.td(_duration(now - session.last_accessed)),
                tags.td(
                    tags.button(
                        "Close",
                        data_post=f"/sessions/{session_id}",
                        data_method="DELETE",
                        data_confirm=f"Close session {session_id}?",
                    )
                ),
                data_session=session_id,
            )
            for session_id, session in sessions
        ]
        error_rows = [
            tags.tr(*(tags.td(_text(entry[key])) for key in ("time", "service", "tool", "principal", "outcome")))
            for entry in self.stats.recent_errors()
        ]
        event_rows = [
            tags.tr(
                *(tags.td(_text(event.get(key))) for key in ("time", "event", "address", "principal", "route")),
                tags.td(_details(event)),
            )
            for event in self.events.recent()
        ]
        body = tags.body(
            header,
            tags.main(
                _section(
                    "Services",
                    _table(
                        (
                            "service",
                            "state",
                            "children",
                            "pool",
                            "spawns",
                            "restarts",
                            "crashes",
                            "start failures",
                            "backoff",
                            "tools",
                            "last error",
                            "",
                        ),
                        service_rows,
                        "services",
                    ),
                ),
                _section(
                    f"Calls (last {stats['recent']:g} s; chart: calls per {stats['bucket']:g} s"
                    f" over {stats['window'] / 60:g} min)",
                    tags.canvas(id="chart", width="720", height="160"),
                    _table(("service", "rate", "p50", "p99", "error rate"), call_rows, "calls"),
                ),
                _section(
                    "Sessions",
                    _table(("session", "principal", "services", "age", "idle", ""), session_rows, "sessions"),
                ),
                _section(
                    "Recent errors", _table(("time", "service", "tool", "principal", "outcome"), error_rows, "errors")
                ),
                _section(
                    "Security events",
                    _table(("time", "event", "address", "principal", "route", "details"), event_rows, "security"),
                ),
                _section("Audit log", *(await self._audit(request))),
                _section("Budgets", await self._budgets()),
            ),
        )
        return _document("mcpgateway admin", body, tags.meta(name="csrf-token", content=browser.csrf))

    async def _audit(self, request: IRequest) -> list[Tag]:
        audit = self.app.audit
        if audit is None:
            return [tags.p("The audit log is off (audit.enabled is false).", class_="note")]
        params = {key: [value] for key, value in _query(request).items()}
        fields = [
            tags.label(
                key,
                tags.input(name=key, value=params.get(key, [""])[0], placeholder=_PLACEHOLDERS.get(key, "")),
            )
            for key in _AUDIT_FILTERS
        ]
        form = tags.form(
            *fields, tags.button("Filter", type="submit"), method="get", action="/admin", id="audit-filter"
        )
        try:
            query = query_from_params({**params, "limit": params.get("limit", ["20"])})
            page = await audit.query(query)
        except BadRequest as error:
            return [form, tags.p(error.message, class_="error")]
        except Exception as error:
            log.error("GET /admin: the audit storage cannot be read: {error}", error=str(error) or repr(error))
            return [form, tags.p("The audit storage cannot be read now (the gateway's log says why).", class_="error")]
        rows = [
            tags.tr(
                *(
                    tags.td(_text(record.get(key)))
                    for key in ("time", "principal", "front", "service", "tool", "session", "outcome", "status")
                )
            )
            for record in page["records"]
        ]
        parts = [
            form,
            _table(("time", "principal", "door", "service", "tool", "session", "outcome", "status"), rows, "audit"),
        ]
        if page.get("next_cursor"):
            more = {key: value[0] for key, value in params.items() if key in _AUDIT_FILTERS}
            more["cursor"] = page["next_cursor"]
            parts.append(tags.a("older records", href="/admin?" + urlencode(more)))
        return parts

    async def _budgets(self) -> Tag:
        policies = [policy for policy in self.app.calls.policies if isinstance(policy, BudgetPolicy)]
        if not policies:
            return tags.p("No budgets are configured.", class_="note")
        report = await policies[0].report()
        rows = [
            tags.tr(
                *(
                    tags.td(_text(entry.get(key)))
                    for key in ("principal", "service", "tool", "limit", "used", "remaining", "reset_at")
                )
            )
            for entry in report["budgets"]
        ]
        return _table(("principal", "service", "tool", "limit", "used", "remaining", "resets"), rows, "budgets")


_PLACEHOLDERS = {"outcome": "ok,tool_error,...", "since": "ISO time or seconds", "until": "ISO time", "limit": "20"}


def _admin_only(principal: Principal) -> None:
    if not principal.admin:
        raise Forbidden("the admin dashboard is for admin principals only", "forbidden")


def _set_cookie(request: IRequest, value: bytes, max_age: int) -> None:
    """
    Set (or, with C{max_age} 0, clear) the dashboard's session cookie:
    C{HttpOnly} (no script reads it), C{Secure} (browsers send it over TLS,
    and to C{http://127.0.0.1} or C{localhost}), C{SameSite=Strict} (no other
    site's page makes the browser send it).
    """
    request.responseHeaders.addRawHeader(
        b"Set-Cookie",
        COOKIE + b"=" + value + b"; Path=/; Max-Age=%d; HttpOnly; Secure; SameSite=Strict" % max_age,
    )


def _html_headers(request: IRequest) -> None:
    request.setHeader(b"Content-Security-Policy", CSP)
    # Not no-referrer: under it a browser sends "Origin: null" with the
    # page's own POSTs, and the origin check could not tell them apart.
    request.setHeader(b"Referrer-Policy", b"same-origin")
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")


async def _render(request: IRequest, status: int, tag: Tag) -> bytes:
    request.setResponseCode(status)
    data: bytes = b"<!DOCTYPE html>\n" + await flattenString(request, tag)
    request.setHeader(b"Content-Length", b"%d" % len(data))
    return data


def _document(title: str, body: Tag, *head: Tag) -> Tag:
    return tags.html(
        tags.head(
            tags.meta(charset="utf-8"),
            tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
            tags.title(title),
            *head,
            tags.link(rel="icon", href="/admin/static/favicon.svg", type="image/svg+xml"),
            tags.link(rel="stylesheet", href="/admin/static/admin.css"),
            tags.script(src="/admin/static/admin.js", defer="defer"),
        ),
        body,
        lang="en",
    )


def _login_page(message: str) -> Tag:
    form = tags.form(
        tags.h1("mcpgateway admin"),
        tags.p(message, class_="error", id="login-error") if message else "",
        tags.label("user", tags.input(name="user", autocomplete="username", autofocus="autofocus")),
        tags.label("password", tags.input(name="password", type="password", autocomplete="current-password")),
        tags.p("or", class_="note"),
        tags.label("token", tags.input(name="token", type="password", autocomplete="off")),
        tags.button("Log in", type="submit"),
        method="post",
        action="/admin/login",
        id="login",
    )
    return _document("mcpgateway admin: log in", tags.body(tags.main(form, class_="login")))


def _section(title: str, *content: Any) -> Tag:
    return tags.section(tags.h2(title), *content)


def _table(headings: Iterable[str], rows: list[Tag], name: str) -> Tag:
    if not rows:
        return tags.p("none", class_="note", id=f"{name}-empty")
    return tags.table(tags.thead(tags.tr(*(tags.th(h) for h in headings))), tags.tbody(*rows), id=name)


def _text(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def _stat(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if unit == "" else f"{value:g}{unit}"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def _details(event: Mapping[str, Any]) -> str:
    shown = {"time", "event", "address", "principal", "route"}
    return " ".join(f"{key}={value}" for key, value in event.items() if key not in shown) or "-"


def _origin(request: IRequest) -> str:
    return (request.getHeader(b"origin") or b"-").decode("latin-1")[:200]


def _query(request: IRequest) -> dict[str, str]:
    """
    @return: The query string's parameters (the last value of each), decoded.
    @raise BadRequest: If it is not UTF-8.
    """
    try:
        return {key.decode(): values[-1].decode() for key, values in (request.args or {}).items() if values}
    except UnicodeDecodeError:
        raise BadRequest("the query string is not UTF-8", "invalid_query") from None


def _form(request: IRequest) -> dict[str, str]:
    """
    @return: The fields of an C{application/x-www-form-urlencoded} body.
    @raise BadRequest: For another type, a body over 8 KiB or not UTF-8.
    """
    kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if kind != b"application/x-www-form-urlencoded":
        raise BadRequest("the login form must be application/x-www-form-urlencoded", "invalid_request")
    raw = request.content.read(_MAX_FORM + 1) if request.content is not None else b""
    if len(raw) > _MAX_FORM:
        raise BadRequest(f"the login form exceeds {_MAX_FORM} bytes", "invalid_request")
    try:
        fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=10, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the login form is not valid UTF-8 form data", "invalid_request") from None
    return {key: values[-1] for key, values in fields.items()}


def _drain_badge(draining: bool, drain: dict[str, Any]) -> list[Tag]:
    """
    @return: The header's note that this process drains (empty if it does not).
    """
    if not draining:
        return []
    state = "drained" if drain["drained"] else f"draining until {drain['drain_deadline']}"
    return [tags.span(state, id="draining", class_="draining")]

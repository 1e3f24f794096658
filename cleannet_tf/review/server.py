"""cleannet-review's HTTP server (standard library ThreadingHTTPServer), bound to 127.0.0.1 by default.

Every request needs the token the server printed: in the URL the first time (`/?token=...`, which sets a
cookie and redirects to `/`), then the cookie, or an `X-Review-Token` header; otherwise 403. Errors are JSON
`{"error": "..."}` with a 4xx status, and change nothing on disk.

    GET  /                         the page (static/index.html; static/app.js, static/style.css)
    GET  /api/summary              classes, counts, threshold, metrics.json's headline numbers
    GET  /api/queue                to_verify.tsv order, decided images left out, grouped by class
    GET  /api/browse?label=&flagged=1|0&suggested=&decided=1|0&offset=&limit=
    GET  /api/references?label=    the class's reference images
    GET  /api/neighbours?key=&count=
    GET  /api/image?key=&size=96|160|320   a JPEG thumbnail
    POST /api/decide  {"key", "decision": "correct"|"wrong"|"relabel", "label": class name or id (relabel),
                       "client": the page's id}   lands by the plan row's split (verified_train/val.tsv)
    POST /api/undo    {"key", "client"}   takes back the decision on key (no key: the newest one of client)
    GET  /api/retrain?offset=      status, log from byte offset, commands, history
    POST /api/retrain {}           starts cleannet-train + cleannet-verify with the review labels

Imports `review.retrain`, `review.session`.
"""

from __future__ import annotations

import http.cookies
import json
import os
import re
import secrets
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from absl import logging

from cleannet_tf.review.retrain import Retrainer, metrics_subset
from cleannet_tf.review.session import ReviewError, ReviewSession, read_metrics

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/app.js": ("app.js", "text/javascript; charset=utf-8"),
                "/style.css": ("style.css", "text/css; charset=utf-8")}
COOKIE = "cleannet_review_token"
_TOKEN_IN_QUERY = re.compile(r"([?&])token=[^&\s]*")
_LONG_RUN = re.compile(r"\S{201,}")
MAX_BODY = 65536


class ReviewServer:
    """Serves a ReviewSession on (host, port); port 0 = a free port. `url` holds the token."""

    def __init__(self, session: ReviewSession, retrainer: Retrainer | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, token: str | None = None):
        self.session, self.retrainer = session, retrainer
        self.token = token or secrets.token_urlsafe(24)
        handler = type("Handler", (_Handler,), {"app": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[:2]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/?token={self.token}"

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def start(self) -> ReviewServer:
        """Serves from a background thread (tests, embedding)."""
        self._thread = threading.Thread(target=self.serve_forever, name="cleannet-review", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.retrainer is not None:
            self.retrainer.stop()


class _Handler(BaseHTTPRequestHandler):
    app: ReviewServer
    server_version = "cleannet-review"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        logging.debug("%s %s", self.address_string(), self._redacted(format % args))

    def _redacted(self, text: str) -> str:
        """`text` (a request line, a path) without the access token, cut to 300 characters: logs never hold it."""
        text = _TOKEN_IN_QUERY.sub(r"\1token=[redacted]", text).replace(self.app.token, "[redacted]")
        return text if len(text) <= 300 else f"{text[:300]}...({len(text)} characters)"

    # ------------------------------------------------------------------ plumbing

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        """{"error": message}; runs of more than 200 non-space characters (an echoed key or path) are shortened."""
        message = _LONG_RUN.sub(lambda m: f"{m.group()[:200]}...({len(m.group())} characters)", message)
        self._json(status, {"error": message[:2000]})

    def _token_ok(self, query: dict) -> bool:
        expected = self.app.token.encode()
        offered = [self.headers.get("X-Review-Token", "")] + query.get("token", [])
        cookie = http.cookies.SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie", ""))
        except http.cookies.CookieError:
            pass
        if COOKIE in cookie:
            offered.append(cookie[COOKIE].value)
        return any(secrets.compare_digest(value.encode(), expected) for value in offered if value)

    def _raw_body(self) -> bytes | None:
        """The request body (None: no usable Content-Length, or too long; the connection then closes)."""
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_BODY:
            self.close_connection = True
            return None
        return self.rfile.read(int(length))

    @staticmethod
    def _parse_body(raw: bytes | None) -> dict:
        if raw is None:
            raise ReviewError(f"the request needs a Content-Length header and a body of at most {MAX_BODY} bytes")
        try:
            body = json.loads(raw or b"{}")
        except ValueError as error:
            raise ReviewError(f"request body is not valid JSON: {error}") from None
        if not isinstance(body, dict):
            raise ReviewError(f"request body must be a JSON object. Received {type(body).__name__}")
        return body

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        try:
            raw = self._raw_body() if method == "POST" else b""  # read first: the connection stays usable
            if not self._token_ok(query):
                self._error(HTTPStatus.FORBIDDEN, "forbidden: open the URL cleannet-review printed (it holds the "
                                                  "access token)")
                return
            if method == "GET" and url.path == "/" and "token" in query:
                # Token from the URL: keep it in a cookie, drop it from the address bar.
                self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {
                    "Location": "/", "Set-Cookie": f"{COOKIE}={self.app.token}; Path=/; HttpOnly; SameSite=Strict"})
                return
            if method == "GET" and url.path in STATIC_FILES:
                name, content_type = STATIC_FILES[url.path]
                with open(os.path.join(STATIC_DIR, name), "rb") as f:
                    self._send(HTTPStatus.OK, f.read(), content_type)
                return
            route = ROUTES.get((method, url.path))
            if route is None:
                known = {path for _, path in ROUTES} | set(STATIC_FILES)
                if url.path in known:
                    self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not allowed on {url.path}")
                else:
                    self._error(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")
                return
            args = self._parse_body(raw) if method == "POST" else {name: values[-1] for name, values in query.items()
                                                  if name != "token"}
            result = route(self.app, args)
            if isinstance(result, tuple):  # (content type, bytes)
                self._send(HTTPStatus.OK, result[1], result[0], {"Cache-Control": "private, max-age=3600"})
            else:
                self._json(HTTPStatus.OK, result)
        except ReviewError as error:
            self._error(error.status, str(error))
        except Exception as error:  # the server keeps serving; the page shows the message
            logging.exception("cleannet-review: %s %s failed", method, self._redacted(self.path))
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(error).__name__}: {error}")

    def do_GET(self):  # noqa: N802 (BaseHTTPRequestHandler's names)
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")


# ---------------------------------------------------------------------- routes


def _only(args: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ReviewError(f"unknown field(s) {', '.join(unknown)}; expected {', '.join(allowed) or 'none'}")


def _int(args: dict, name: str, default: int, low: int, high: int) -> int:
    value = args.get(name, default)
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise ReviewError(f"'{name}' must be an integer. Received {value!r}") from None
    if not low <= value <= high:
        raise ReviewError(f"'{name}' must be in [{low}, {high}]. Received {value}")
    return value


def _summary(app: ReviewServer, args: dict) -> dict:
    _only(args, ())
    return {**app.session.summary(), "metrics": metrics_subset(read_metrics(app.session.workdir)),
            "retrain": app.retrainer is not None}


def _queue(app, args):
    _only(args, ())
    return app.session.queue()


def _browse(app, args):
    _only(args, ("label", "flagged", "suggested", "decided", "offset", "limit"))
    return app.session.browse(label=args.get("label"), flagged=args.get("flagged"), suggested=args.get("suggested"),
                              decided=args.get("decided"), offset=_int(args, "offset", 0, 0, 10**9),
                              limit=_int(args, "limit", 60, 1, 500))


def _references(app, args):
    _only(args, ("label",))
    return app.session.references(args.get("label"))


def _neighbours(app, args):
    _only(args, ("key", "count"))
    return app.session.neighbours(args.get("key"), _int(args, "count", 12, 1, 100))


def _image(app, args):
    _only(args, ("key", "size"))
    return "image/jpeg", app.session.thumbnail(args.get("key"), _int(args, "size", 160, 1, 10000))


def _client(args: dict) -> str | None:
    """The page's id for itself (recorded with each event), or None."""
    client = args.get("client")
    if client is not None and not (isinstance(client, str) and 0 < len(client) <= 100):
        raise ReviewError(f"'client' must be a string of 1 to 100 characters. Received {client!r}")
    return client


def _decide(app, args):
    _only(args, ("key", "decision", "label", "client"))
    for name in ("key", "decision"):
        if name not in args:
            raise ReviewError(f"missing field {name!r}")
    item = app.session.decide(args["key"], args["decision"], args.get("label"), client=_client(args))
    return {"item": item, "summary": app.session.summary()}


def _undo(app, args):
    _only(args, ("key", "client"))
    item = app.session.undo(key=args.get("key"), client=_client(args))
    if item is None:
        raise ReviewError("nothing to undo", status=409)
    return {"item": item, "summary": app.session.summary()}


def _retrain_status(app, args):
    _only(args, ("offset",))
    if app.retrainer is None:
        raise ReviewError("retraining is off (cleannet-review --noretrain)", status=409)
    return app.retrainer.status(_int(args, "offset", 0, 0, 10**12))


def _retrain_start(app, args):
    _only(args, ())
    if app.retrainer is None:
        raise ReviewError("retraining is off (cleannet-review --noretrain)", status=409)
    try:
        entry = app.retrainer.start(decisions=app.session.summary()["decided"])
    except RuntimeError as error:
        raise ReviewError(str(error), status=409) from None
    return {"started": entry}


ROUTES = {
    ("GET", "/api/summary"): _summary,
    ("GET", "/api/queue"): _queue,
    ("GET", "/api/browse"): _browse,
    ("GET", "/api/references"): _references,
    ("GET", "/api/neighbours"): _neighbours,
    ("GET", "/api/image"): _image,
    ("POST", "/api/decide"): _decide,
    ("POST", "/api/undo"): _undo,
    ("GET", "/api/retrain"): _retrain_status,
    ("POST", "/api/retrain"): _retrain_start,
}

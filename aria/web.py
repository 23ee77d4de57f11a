"""The ASGI app: Telegram updates in webhook mode, signed events from the owner's systems, readiness.

    POST /telegram          Telegram updates; X-Telegram-Bot-Api-Secret-Token missing → 401, wrong → 403
    POST /events/{source}   events, authenticated per source (see aria.events)
    GET  /healthz           200 when ready, 503 when not; JSON either way

Every refused call leaves one `event` row and runs nothing. An owner's update is recorded as `telegram-update` with
its update_id as the delivery id *before* it is handed to python-telegram-bot, so a redelivered update (Telegram
retries when an answer is slow) is answered 200 and handled once. Anyone else's update goes straight to the owner
guard, which records its one refused row (deduplicated by update_id as well) and runs nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from telegram import Update
from telegram.ext import Application

from aria.config import env_name
from aria.errors import ConfigError
from aria.events import BodyTooLarge, EventIngress, read_body
from aria.ledger import as_utc
from aria.telegram.intake import SOURCE as INTAKE_SOURCE
from aria.telegram.intake import to_record

if TYPE_CHECKING:
    from aria.app import Aria

log = logging.getLogger(__name__)

SECRET_HEADER = "x-telegram-bot-api-secret-token"
TELEGRAM_SOURCE = INTAKE_SOURCE
TELEGRAM_MAX_BYTES = 1024 * 1024  # updates are a few KB; this only stops a flood
TelegramMode = Literal["webhook", "polling", "stopped", "off"]


@dataclass(frozen=True)
class Health:
    """Readiness for a process manager, and the lines /status can show."""

    database: str  # "ok" or the error's type
    ledger: str  # "writable", or why not (a full disk, a read-only file): then Aria is not acting
    scheduler: Literal["running", "stopped"]
    telegram: TelegramMode
    open_circuits: list[str] = field(default_factory=list)
    half_open_circuits: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        """Database answers and takes writes, the scheduler runs, and Telegram (when served here) is running.

        Open circuits are reported but do not fail readiness: restarting Aria does not bring a remote service back.
        """
        return (self.database == "ok" and self.ledger == "writable" and self.scheduler == "running"
                and self.telegram != "stopped")

    def as_json(self) -> dict[str, Any]:
        """The /healthz body."""
        return {"ready": self.ready, **asdict(self)}


def health(aria: Aria, application: Application | None) -> Health:  # type: ignore[type-arg]
    """Check the database with a trivial query, and read the scheduler, Telegram and circuit states."""
    try:
        with aria.ledger.read() as session:
            session.execute(text("SELECT 1"))
        database = "ok"
    except SQLAlchemyError as exc:
        log.warning("health check: database unreachable (%s)", type(exc).__name__)
        database = type(exc).__name__
    open_, half_open = [], []
    if database == "ok":
        now = aria.ledger.now()
        for row in aria.board.snapshot():
            until = as_utc(row.open_until) if row.open_until else None
            if row.state == "open" and (until is None or until > now):
                open_.append(row.key)
            elif row.state != "closed":
                half_open.append(row.key)
    return Health(database=database, ledger=aria.ledger.health.reason or "writable",
                  scheduler="running" if aria.scheduler.running else "stopped",
                  telegram=telegram_mode(application), open_circuits=open_, half_open_circuits=half_open)


def telegram_mode(application: Application | None) -> TelegramMode:  # type: ignore[type-arg]
    """How updates reach this process: pushed to /telegram, pulled by polling, not at all (stopped), or no bot here."""
    if application is None:
        return "off"
    if application.updater is not None and application.updater.running:
        return "polling"
    return "webhook" if application.running else "stopped"


class _Endpoints:
    def __init__(self, aria: Aria, application: Application | None,  # type: ignore[type-arg]
                 ingress: EventIngress) -> None:
        self.aria = aria
        self.application = application
        self.ingress = ingress
        secret = aria.settings.webhook_secret
        self.secret = secret.get_secret_value().encode() if secret is not None else b""

    async def telegram(self, request: Request) -> Response:
        """One update from Telegram: check the secret token, read, parse, deduplicate, queue."""
        assert self.application is not None
        given = request.headers.get(SECRET_HEADER)
        if given is None:
            return self._refuse(401, "missing secret token")
        if not hmac.compare_digest(given.encode("utf-8", "replace"), self.secret):
            return self._refuse(403, "wrong secret token")
        try:
            body = await read_body(request.headers, request.stream(), TELEGRAM_MAX_BYTES)
        except BodyTooLarge:
            return self._refuse(413, f"body over {TELEGRAM_MAX_BYTES} bytes", verified=True)
        sha = hashlib.sha256(body).hexdigest()
        try:
            data = json.loads(body)
            update_id = data["update_id"]
            if not isinstance(update_id, int) or isinstance(update_id, bool):
                raise TypeError("update_id is not an integer")
            update = Update.de_json(data, self.application.bot)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:  # JSON errors: ValueError
            return self._refuse(400, f"malformed update ({type(exc).__name__})", verified=True, body_sha256=sha)
        user = update.effective_user
        if user is None or user.id not in self.aria.settings.owner_ids:
            # The owner guard records the refusal, once per update_id: a second row here would break "one row".
            await self.application.update_queue.put(update)
            return JSONResponse({"status": "accepted"})
        # A message keeps its payload: a crash before its run opens leaves it to be handed over again at the next
        # start (see aria.telegram.intake). A button press needs none: its buttons are still there.
        keep = to_record(update)
        first = self.aria.ledger.record_event(TELEGRAM_SOURCE, status="accepted", verified=True,
                                              delivery_id=str(update_id), body_sha256=sha, user_id=user.id,
                                              payload=body.decode("utf-8", "replace") if keep else None)
        if first is None:
            self.aria.ledger.record_event(TELEGRAM_SOURCE, status="duplicate", verified=True, body_sha256=sha,
                                          reason=f"update {update_id} already received")
            return JSONResponse({"status": "duplicate"})
        await self.application.update_queue.put(update)
        return JSONResponse({"status": "accepted"})

    def _refuse(self, status_code: int, reason: str, *, verified: bool = False,
                body_sha256: str | None = None) -> Response:
        self.aria.ledger.record_event(TELEGRAM_SOURCE, status="refused", verified=verified, reason=reason,
                                      body_sha256=body_sha256)
        log.info("refused a call to /telegram: %s", reason)
        return JSONResponse({"status": "refused", "reason": reason}, status_code=status_code)

    async def event(self, request: Request) -> Response:
        """A signed event from one of the owner's systems."""
        receipt = await self.ingress.receive(request.path_params["source"], request.headers, request.stream())
        body: dict[str, Any] = {"status": receipt.verdict}
        if receipt.reason:
            body["reason"] = receipt.reason
        if receipt.event_id is not None and receipt.verdict != "refused":  # row ids only for verified callers
            body["event"] = receipt.event_id
        return JSONResponse(body, status_code=receipt.status_code)

    async def healthz(self, request: Request) -> Response:
        """Readiness: 200 when ready, 503 otherwise."""
        report = health(self.aria, self.application)
        return JSONResponse(report.as_json(), status_code=200 if report.ready else 503,
                            headers={"cache-control": "no-store"})


def build_web_app(aria: Aria, application: Application | None,  # type: ignore[type-arg]
                  *, ingress: EventIngress) -> Starlette:
    """The ASGI app; /telegram exists only when an Application is given (and then a webhook secret is required)."""
    endpoints = _Endpoints(aria, application, ingress)
    routes = [Route("/events/{source}", endpoints.event, methods=["POST"]),
              Route("/healthz", endpoints.healthz, methods=["GET"])]
    if application is not None:
        if not endpoints.secret:
            raise ConfigError([f"{env_name('webhook_secret')}: required to accept Telegram updates by webhook"])
        routes.append(Route("/telegram", endpoints.telegram, methods=["POST"]))
    return Starlette(routes=routes)


__all__ = ["SECRET_HEADER", "TELEGRAM_SOURCE", "Health", "build_web_app", "health", "telegram_mode"]

# Russian names and messages are intended: realistic data for the seed's audience.
# ruff: noqa: RUF001
"""The ``outbox demo`` domain: the seed's bot, its six events, traffic, a receiver.

Three parts, each small:

* :func:`setup` creates schema ``demo`` (users, transactions, tickets,
  ticket messages; SQL in ``sql/demo.sql``) and tracks it with
  :func:`outbox.capture.track` into the six seed events.
* :class:`Traffic` writes realistic bot activity through plain SQL
  transactions at a given rate of events per second.
* :class:`Receiver` is the built-in loopback webhook endpoint: it verifies
  both signatures of every request and counts; ``/hooks/flaky`` refuses a
  share of requests on purpose, so retries and failures show on the page.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import hashlib
import hmac
import logging
import random
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import scalar_row
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from outbox.capture import Rule, TrackedRule, track
from outbox.rows import record_row
from outbox.sqlfiles import query

log = logging.getLogger("outbox.demo")

SQL_FILE = "demo.sql"
DEPOSIT_COMPLETED = "NEW.status = 'completed' AND NEW.type = 'deposit'"

# Keys (outbox track --key): the user an account event is about, the ticket a
# support event is about, so a webhook with "ordering": "key" gets each
# user's and each ticket's events in order, and the console can filter by key.
_USER = ("user_id",)
RULES: tuple[Rule, ...] = (
    # Exactly the seed's user.created payload (user_id is a generated column).
    Rule(
        "demo.users",
        "insert",
        "user.created",
        columns=(
            "user_id",
            "telegram_id",
            "username",
            "first_name",
            "last_name",
            "referral_code",
            "referred_by_id",
        ),
        key=_USER,
    ),
    Rule("demo.transactions", "insert", "transaction.created", key=_USER),
    # A deposit whose status becomes completed...
    Rule(
        "demo.transactions",
        "update",
        "payment.completed",
        of=("status",),
        when=DEPOSIT_COMPLETED,
        key=_USER,
    ),
    # ...or that another writer inserts already completed.
    Rule("demo.transactions", "insert", "payment.completed", when=DEPOSIT_COMPLETED, key=_USER),
    Rule("demo.tickets", "insert", "ticket.created", key=("id",)),
    # Only when the status really changes (IS DISTINCT FROM).
    Rule("demo.tickets", "update", "ticket.status_changed", of=("status",), key=("id",)),
    Rule("demo.ticket_messages", "insert", "ticket.message_added", key=("ticket_id",)),
)
EVENT_TYPES = (
    "user.created",
    "transaction.created",
    "payment.completed",
    "ticket.created",
    "ticket.status_changed",
    "ticket.message_added",
)


def _q(name: str) -> str:
    return query(name, SQL_FILE)


class _Recent(NamedTuple):
    """A ``recent_state`` row: what the generator picks up after a restart."""

    kind: str  # 'user', 'pending' (a payment) or 'ticket'
    id: int
    owner: int
    status: str | None


class _Settled(NamedTuple):
    user_id: int
    amount_kopeks: int
    type: str


class _Webhook(NamedTuple):
    id: int
    secret: str


async def _value(conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, Any]) -> Any:
    """The one value statement ``name`` returns; None when it returns no row."""
    async with conn.cursor(row_factory=scalar_row) as cur:
        await cur.execute(_q(name), params)
        return await cur.fetchone()


def setup(conn: psycopg.Connection[Any]) -> list[TrackedRule]:
    """Create schema ``demo`` and its capture rules; idempotent."""
    with conn.transaction():
        # bytes: the DDL is not a parameterised query.
        conn.execute(_q("schema").encode())
    return track(conn, RULES)


# --- realistic data ---------------------------------------------------------------

# (first name, its Latin spelling for usernames); last names likewise.
_RU_MALE = [
    ("Алексей", "alexey"),
    ("Дмитрий", "dmitry"),
    ("Иван", "ivan"),
    ("Сергей", "sergey"),
    ("Михаил", "mikhail"),
    ("Артём", "artem"),
    ("Никита", "nikita"),
    ("Павел", "pavel"),
    ("Егор", "egor"),
    ("Максим", "maxim"),
]
_RU_FEMALE = [
    ("Анна", "anna"),
    ("Мария", "maria"),
    ("Екатерина", "ekaterina"),
    ("Ольга", "olga"),
    ("Дарья", "darya"),
    ("Алина", "alina"),
    ("Наталья", "natalya"),
    ("Софья", "sofia"),
    ("Ксения", "ksenia"),
]
_RU_LAST = [
    ("Смирнов", "smirnov"),
    ("Иванов", "ivanov"),
    ("Кузнецов", "kuznetsov"),
    ("Попов", "popov"),
    ("Соколов", "sokolov"),
    ("Лебедев", "lebedev"),
    ("Козлов", "kozlov"),
    ("Новиков", "novikov"),
    ("Морозов", "morozov"),
    ("Волков", "volkov"),
    ("Фёдоров", "fedorov"),
    ("Орлов", "orlov"),
]
_EN_FIRST = [
    "James",
    "Emma",
    "Oliver",
    "Sophia",
    "Liam",
    "Ava",
    "Noah",
    "Mia",
    "Lucas",
    "Amelia",
    "Ethan",
    "Harper",
    "Daniel",
    "Chloe",
    "Jack",
    "Grace",
]
_EN_LAST = [
    "Smith",
    "Johnson",
    "Brown",
    "Taylor",
    "Wilson",
    "Davies",
    "Evans",
    "Walker",
    "Clarke",
    "Wright",
    "Hughes",
    "Green",
    None,
]
_METHODS = ["yookassa", "cryptobot", "telegram_stars", "tribute", "heleket"]
_DEPOSITS = [5_000, 10_000, 15_000, 25_000, 50_000, 100_000, 150_000, 300_000]
_PLANS = [
    (9_900, "1 месяц", "1 month"),
    (26_900, "3 месяца", "3 months"),
    (49_900, "6 месяцев", "6 months"),
    (89_900, "12 месяцев", "12 months"),
]
_TICKETS_RU = [
    ("Не подключается VPN", "Здравствуйте! После обновления не могу подключиться, пишет таймаут."),
    ("Не пришли деньги на баланс", "Оплатил через ЮKassa 20 минут назад, баланс не изменился."),
    ("Как продлить подписку?", "Подскажите, как продлить подписку на 3 месяца?"),
    ("Низкая скорость", "Вечером скорость падает до 2 Мбит/с, можно сменить сервер?"),
    ("Возврат средств", "Хочу вернуть деньги за неиспользованный период."),
]
_TICKETS_EN = [
    ("Can't connect on iPhone", "Hi, the config imports fine but the connection never starts."),
    ("Payment not credited", "I paid with Telegram Stars but my balance is still zero."),
    ("Change of plan", "Can I switch from the monthly plan to the yearly one?"),
    ("Referral bonus missing", "My friend joined with my code yesterday, no bonus yet."),
]
_FOLLOW_RU = ["Есть новости?", "Проверил ещё раз — проблема осталась.", "Спасибо, жду ответа."]
_FOLLOW_EN = ["Any update?", "Tried again, still the same.", "Thanks, waiting for your reply."]
_ADMIN_RU = [
    "Здравствуйте! Уже проверяем, ответим в течение часа.",
    "Переключили вас на другой сервер, попробуйте снова.",
    "Платёж нашли, баланс пополнен. Приносим извинения!",
]
_ADMIN_EN = [
    "Hello! We are looking into it and will reply within the hour.",
    "We moved you to another server, please try again.",
    "Found your payment and credited it. Sorry for the wait!",
]


@dataclass
class _User:
    id: int
    ru: bool


@dataclass
class _Ticket:
    id: int
    user_id: int
    status: str
    ru: bool


@dataclass
class TrafficStats:
    events: int = 0
    transactions: int = 0
    errors: int = 0


class Traffic:
    """Bot activity at ``rate`` events per second, in plain SQL transactions.

    A token bucket paces the writes; at high rates several actions share
    one transaction (about 50 commits per second at most), as a busy bot
    would batch them. Every action knows how many events its writes fire.
    """

    def __init__(self, url: str, rate: float, *, rng: random.Random | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.url = url
        self.rate = rate
        self.rng = rng or random.Random()
        self.stats = TrafficStats()
        self._users: collections.deque[_User] = collections.deque(maxlen=500)
        self._pending: collections.deque[tuple[int, int]] = collections.deque(maxlen=200)
        self._tickets: dict[int, _Ticket] = {}

    async def run(self, stop: asyncio.Event, duration: float | None = None) -> TrafficStats:
        loop = asyncio.get_running_loop()
        deadline = None if duration is None else loop.time() + duration
        per_txn = max(1, int(self.rate / 50))
        tokens, last = 1.0, loop.time()
        conn: psycopg.AsyncConnection[Any] | None = None
        backoff = 0.5
        try:
            while not stop.is_set():
                now = loop.time()
                if deadline is not None and now >= deadline:
                    break
                # At most one second of burst after a stall.
                tokens = min(tokens + self.rate * (now - last), max(self.rate, 1.0))
                last = now
                if tokens >= 1:
                    try:
                        if conn is None or conn.closed:
                            conn = await psycopg.AsyncConnection.connect(self.url)
                            await self._load_state(conn)
                        tokens -= await self._transaction(conn, min(int(tokens), per_txn))
                        backoff = 0.5
                    except psycopg.OperationalError as exc:
                        self.stats.errors += 1
                        log.warning(
                            "traffic: database unavailable (%s); retrying in %.1fs",
                            _first_line(exc),
                            backoff,
                        )
                        if conn is not None:
                            await conn.close()
                        conn = None
                        await _wait(stop, backoff)
                        backoff = min(backoff * 2, 10.0)
                    continue
                wait = (1 - tokens) / self.rate
                if deadline is not None:
                    wait = min(wait, deadline - now)
                await _wait(stop, min(wait, 0.5))
        finally:
            if conn is not None:
                await conn.close()
        return self.stats

    async def _transaction(self, conn: psycopg.AsyncConnection[Any], budget: int) -> int:
        """Run actions worth ``budget`` events in one transaction; return events fired."""
        events = 0
        undo: list[Callable[[], object]] = []
        try:
            async with conn.transaction():
                for _ in range(budget * 3):  # some actions fire no event
                    events += await self._action(conn, undo)
                    if events >= budget:
                        break
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            # The writes rolled back; so must what we remembered of them.
            for fn in reversed(undo):
                fn()
            self.stats.errors += 1
            log.warning("traffic: transaction rolled back: %s", _first_line(exc))
            return 1  # spend a token anyway, so a persistent error cannot spin
        self.stats.events += events
        self.stats.transactions += 1
        return events

    async def _load_state(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async with conn.transaction(), conn.cursor(row_factory=record_row(_Recent)) as cur:
            await cur.execute(_q("recent_state"))
            rows = await cur.fetchall()
        self._users.clear()
        self._pending.clear()
        self._tickets.clear()
        for r in reversed(rows):
            if r.kind == "user":
                self._users.append(_User(r.id, self.rng.random() < 0.6))
            elif r.kind == "pending":
                self._pending.append((r.id, r.owner))
            else:
                assert r.status is not None
                self._tickets[r.id] = _Ticket(r.id, r.owner, r.status, self.rng.random() < 0.6)

    async def _action(
        self, conn: psycopg.AsyncConnection[Any], undo: list[Callable[[], object]]
    ) -> int:
        r = self.rng.random()
        if len(self._users) < 5 or r < 0.22:
            return await self._signup(conn, undo)
        if r < 0.40:
            return await self._deposit(conn, undo)
        if r < 0.55 and self._pending:
            return await self._settle(conn, undo)
        if r < 0.65:
            return await self._subscription(conn)
        if r < 0.75 or not self._tickets:
            return await self._open_ticket(conn, undo)
        if r < 0.83:
            return await self._user_message(conn)
        if r < 0.93:
            return await self._admin_reply(conn, undo)
        return await self._close_ticket(conn, undo)

    # --- actions: each returns the number of events its writes fire -----------------

    async def _signup(
        self, conn: psycopg.AsyncConnection[Any], undo: list[Callable[[], object]]
    ) -> int:
        rng = self.rng
        ru = rng.random() < 0.65
        if ru:
            male = rng.random() < 0.5
            first, first_lat = rng.choice(_RU_MALE if male else _RU_FEMALE)
            last_ru, last_lat = rng.choice(_RU_LAST)
            last: str | None = last_ru if male else last_ru + "а"
            handle = f"{first_lat}_{last_lat}" if rng.random() < 0.5 else first_lat
        else:
            first = rng.choice(_EN_FIRST)
            last = rng.choice(_EN_LAST)
            handle = (first + (last or "")).lower()
        username = None if rng.random() < 0.15 else f"{handle}{rng.randint(1, 999)}"
        referrer = rng.choice(self._users).id if self._users and rng.random() < 0.3 else None
        user_id = await _value(
            conn,
            "insert_user",
            {
                "telegram_id": rng.randint(100_000_000, 7_999_999_999),
                "username": username,
                "first_name": first,
                "last_name": last,
                "language_code": "ru" if ru else "en",
                "referral_code": "ref"
                + "".join(rng.choices(string.ascii_letters + string.digits, k=8)),
                "referred_by_id": referrer,
            },
        )
        if user_id is None:  # telegram_id or referral code taken: nothing inserted
            return 0
        self._users.append(_User(int(user_id), ru))
        undo.append(self._users.pop)
        return 1

    async def _deposit(
        self, conn: psycopg.AsyncConnection[Any], undo: list[Callable[[], object]]
    ) -> int:
        user = self.rng.choice(self._users)
        method = self.rng.choice(_METHODS)
        amount = self.rng.choice(_DEPOSITS)
        desc = f"Пополнение баланса через {method}" if user.ru else f"Balance top-up via {method}"
        tx_id = await _value(
            conn,
            "insert_transaction",
            {
                "user_id": user.id,
                "type": "deposit",
                "amount_kopeks": amount,
                "status": "pending",
                "description": desc,
                "payment_method": method,
            },
        )
        assert tx_id is not None
        if self.rng.random() < 0.5:
            # Paid at once (the provider confirmed within the same request).
            return 1 + await self._settle_one(conn, int(tx_id), user.id)
        self._pending.append((int(tx_id), user.id))
        undo.append(self._pending.pop)
        return 1

    async def _settle(
        self, conn: psycopg.AsyncConnection[Any], undo: list[Callable[[], object]]
    ) -> int:
        tx_id, user_id = self._pending.popleft()
        undo.append(lambda: self._pending.appendleft((tx_id, user_id)))
        return await self._settle_one(conn, tx_id, user_id)

    async def _settle_one(
        self, conn: psycopg.AsyncConnection[Any], tx_id: int, user_id: int
    ) -> int:
        status = "failed" if self.rng.random() < 0.1 else "completed"
        async with conn.cursor(row_factory=record_row(_Settled)) as cur:
            await cur.execute(_q("settle_transaction"), {"id": tx_id, "status": status})
            settled = await cur.fetchone()
        if settled is None or status == "failed":
            return 0
        await conn.execute(
            _q("credit_balance"), {"user_id": user_id, "amount_kopeks": settled.amount_kopeks}
        )
        events = 1  # payment.completed
        referrer = await _value(conn, "referrer", {"user_id": user_id})
        if referrer is not None:
            bonus = max(int(settled.amount_kopeks) // 10, 100)
            await conn.execute(
                _q("insert_transaction"),
                {
                    "user_id": referrer,
                    "type": "referral_reward",
                    "amount_kopeks": bonus,
                    "status": "completed",
                    "description": f"Referral bonus for user {user_id}",
                    "payment_method": None,
                },
            )
            await conn.execute(_q("credit_balance"), {"user_id": referrer, "amount_kopeks": bonus})
            events += 1  # transaction.created
        return events

    async def _subscription(self, conn: psycopg.AsyncConnection[Any]) -> int:
        user = self.rng.choice(self._users)
        price, ru, en = self.rng.choice(_PLANS)
        cur = await conn.execute(_q("debit_balance"), {"user_id": user.id, "amount_kopeks": price})
        if cur.rowcount != 1:
            return 0  # not enough money: nothing happens
        await conn.execute(
            _q("insert_transaction"),
            {
                "user_id": user.id,
                "type": "subscription_payment",
                "amount_kopeks": price,
                "status": "completed",
                "payment_method": "balance",
                "description": f"Подписка на {ru}" if user.ru else f"Subscription for {en}",
            },
        )
        return 1

    async def _open_ticket(
        self, conn: psycopg.AsyncConnection[Any], undo: list[Callable[[], object]]
    ) -> int:
        user = self.rng.choice(self._users)
        title, text = self.rng.choice(_TICKETS_RU if user.ru else _TICKETS_EN)
        priority = self.rng.choices(["low", "normal", "high", "urgent"], [2, 6, 2, 1])[0]
        ticket_id = await _value(
            conn, "insert_ticket", {"user_id": user.id, "title": title, "priority": priority}
        )
        assert ticket_id is not None
        tid = int(ticket_id)
        ticket = _Ticket(tid, user.id, "open", user.ru)
        await self._message(conn, ticket, False, [text])
        self._tickets[tid] = ticket
        undo.append(lambda: self._tickets.pop(tid, None))
        if len(self._tickets) > 200:
            self._tickets.pop(next(iter(self._tickets)))
        return 2

    async def _message(
        self, conn: psycopg.AsyncConnection[Any], t: _Ticket, from_admin: bool, texts: list[str]
    ) -> int:
        await conn.execute(
            _q("insert_message"),
            {
                "ticket_id": t.id,
                "user_id": t.user_id,
                "is_from_admin": from_admin,
                "message_text": self.rng.choice(texts),
            },
        )
        return 1  # ticket.message_added

    async def _user_message(self, conn: psycopg.AsyncConnection[Any]) -> int:
        t = self.rng.choice(list(self._tickets.values()))
        return await self._message(conn, t, False, _FOLLOW_RU if t.ru else _FOLLOW_EN)

    async def _admin_reply(
        self, conn: psycopg.AsyncConnection[Any], undo: list[Callable[[], object]]
    ) -> int:
        t = self.rng.choice(list(self._tickets.values()))
        await self._message(conn, t, True, _ADMIN_RU if t.ru else _ADMIN_EN)
        # A second reply leaves the status 'answered': the UPDATE runs, but no
        # ticket.status_changed fires, because the status did not change.
        await conn.execute(_q("set_ticket_status"), {"id": t.id, "status": "answered"})
        changed = t.status != "answered"
        old = t.status
        t.status = "answered"
        undo.append(lambda: setattr(t, "status", old))
        return 2 if changed else 1

    async def _close_ticket(
        self, conn: psycopg.AsyncConnection[Any], undo: list[Callable[[], object]]
    ) -> int:
        t = self.rng.choice(list(self._tickets.values()))
        await conn.execute(_q("set_ticket_status"), {"id": t.id, "status": "closed"})
        self._tickets.pop(t.id, None)
        undo.append(lambda: self._tickets.__setitem__(t.id, t))
        return 1


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep for pacing, but wake at once when asked to stop."""
    if seconds <= 0:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- the loopback receiver -----------------------------------------------------------


def generate_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_") :], validate=True)
        except binascii.Error:
            pass
    return secret.encode("utf-8")


def verify_seed_signature(secret: str, body: bytes, header: str | None) -> bool:
    """``X-Webhook-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`` (the seed's)."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header[len("sha256=") :])


def verify_standard_signature(
    secret: str,
    msg_id: str | None,
    timestamp: str | None,
    body: bytes,
    header: str | None,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> bool:
    """Standard Webhooks: ``v1,<base64 HMAC-SHA256(key, "{id}.{ts}.{body}")>``, any of several."""
    if not (msg_id and timestamp and header):
        return False
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode()
    for part in header.split():
        version, _, sig = part.partition(",")
        if version == "v1" and hmac.compare_digest(expected, sig):
            return True
    return False


@dataclass
class EndpointStats:
    ok: int = 0
    bad_signature: int = 0
    refused: int = 0
    duplicates: int = 0
    by_type: collections.Counter[str] = field(default_factory=collections.Counter)


class Receiver:
    """The demo's webhook endpoint, in-process on a loopback port.

    ``POST /hooks/main`` accepts every correctly signed request (204) and
    rejects a bad signature (401). ``POST /hooks/flaky`` answers 503 to a
    share ``fail_rate`` of requests, so the page shows retries and failures.
    """

    def __init__(
        self,
        secrets_by_endpoint: dict[str, str],
        *,
        fail_rate: float = 0.3,
        rng: random.Random | None = None,
    ) -> None:
        self.secrets = secrets_by_endpoint
        self.fail_rate = fail_rate
        self.rng = rng or random.Random()
        self.stats = {name: EndpointStats() for name in secrets_by_endpoint}
        # webhook-id is the same on every retry: remember recent ones to count
        # repeats (bounded, as the demo may run for hours).
        self._seen: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        self.received = asyncio.Event()
        self.app = Starlette(routes=[Route("/hooks/{name}", self._hook, methods=["POST"])])

    async def _hook(self, request: Request) -> Response:
        name = request.path_params["name"]
        secret = self.secrets.get(name)
        if secret is None:
            return JSONResponse({"detail": "unknown endpoint"}, status_code=404)
        stats = self.stats[name]
        body = await request.body()
        h = request.headers
        seed_ok = verify_seed_signature(secret, body, h.get("x-webhook-signature"))
        std_ok = verify_standard_signature(
            secret,
            h.get("webhook-id"),
            h.get("webhook-timestamp"),
            body,
            h.get("webhook-signature"),
        )
        if not (seed_ok and std_ok):
            stats.bad_signature += 1
            log.warning(
                "receiver %s: bad signature on %s (seed %s, standard %s)",
                name,
                h.get("webhook-id"),
                seed_ok,
                std_ok,
            )
            return JSONResponse({"detail": "invalid signature"}, status_code=401)
        if name == "flaky" and self.rng.random() < self.fail_rate:
            stats.refused += 1
            return JSONResponse({"detail": "flaky on purpose"}, status_code=503)
        key = (name, h.get("webhook-id", ""))
        if key in self._seen:
            stats.duplicates += 1
        else:
            self._seen[key] = None
            if len(self._seen) > 100_000:
                self._seen.popitem(last=False)
        stats.ok += 1
        stats.by_type[h.get("x-webhook-event", "?")] += 1
        self.received.set()
        return Response(status_code=204)


def summary(stats: dict[str, EndpointStats]) -> str:
    parts = []
    for name, s in stats.items():
        text = f"{name}: {s.ok} ok"
        if s.refused:
            text += f", {s.refused} refused on purpose"
        if s.bad_signature:
            text += f", {s.bad_signature} BAD SIGNATURE"
        if s.duplicates:
            text += f", {s.duplicates} repeats"
        parts.append(text)
    return "; ".join(parts)


# --- webhooks of the demo -------------------------------------------------------------

MAIN_WEBHOOK = "demo receiver"
FLAKY_WEBHOOK = "demo flaky receiver"


def register_webhook(
    conn: psycopg.Connection[Any], name: str, url: str, event_types: list[str], description: str
) -> tuple[int, str]:
    """Point the demo webhook ``name`` at ``url`` (the port changes every run); keep its secret.

    Registered through SQL before the server starts, so the first events
    already have a subscriber. Returns ``(id, secret)``.
    """
    params = {"name": name, "url": url, "event_types": event_types}
    with conn.transaction(), conn.cursor(row_factory=record_row(_Webhook)) as cur:
        row = cur.execute(_q("webhook_repoint"), params).fetchone()
        if row is None:
            row = cur.execute(
                _q("webhook_create"),
                {**params, "secret": generate_secret(), "description": description},
            ).fetchone()
    assert row is not None
    return int(row.id), str(row.secret)

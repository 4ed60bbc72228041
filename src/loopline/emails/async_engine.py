"""The single-threaded SMTP engine: one asyncio event loop drives every pooled connection ([M29], [M30]).

Why not threads: on a loaded machine the cost per message was GIL hand-offs between ten threads and queue wake-ups,
and the mail server sat idle while a connection thread waited for the GIL to read a reply. Here one thread does it
all: each connection is a coroutine (MAIL, RCPT, DATA, body), rendering happens in the loop right when a connection
needs its next message, and the commit point is batched across the connections that reached it.

The database is never touched while the loop runs (Django refuses that, and it must not be): the loop runs until a
connection needs the engine — a commit point, a new claimed batch, results to flush — then stops, and the driver
(same thread) does the database work and writes the final dots right after the commit, before the loop resumes.

Used when the default mailer is Django's own SMTP backend (host, port, timeout, STARTTLS, implicit TLS, AUTH PLAIN /
LOGIN from its settings); anything else keeps the thread engine in ``sending``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import datetime as dt
import smtplib
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeGuard

from django.core.mail.backends.smtp import EmailBackend as DjangoSMTPBackend
from django.core.mail.utils import DNS_NAME
from django.utils import timezone

from .models import Delivery
from .sending import (
    _COMMIT_GATHER_S,
    _DOT_RE,
    _PLAIN_ADDRESS_RE,
    CRLF,
    FlushResults,
    Outgoing,
    Progress,
    RateLimiter,
    RenderBatch,
    Result,
    _relax_commit_durability,
    claim,
    commit_and_complete,
    setting,
)

# RFC 5321 4.5.3.2 suggests minutes for every reply; used when the mailer sets no timeout.
_DEFAULT_TIMEOUT_S = 300.0
_MAX_REPLY_BYTES = 1 << 16
_SWEEP_S = 0.1  # reply timeouts are checked this often


def usable(backend: Any) -> TypeGuard[DjangoSMTPBackend]:
    """Django's own SMTP backend (a subclass may change how it connects: the thread engine uses it as it is)."""
    if type(backend) is not DjangoSMTPBackend or str(setting("LOOPLINE_EMAIL_ENGINE", "loop")) != "loop":
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    return False  # already inside an event loop: this thread cannot run another


def _parse(lines: list[bytes]) -> tuple[int, str]:
    head = lines[-1][:3]
    code = int(head) if head.isdigit() else -1
    text = b"\n".join(line[4:].rstrip(b"\r\n") for line in lines)
    return code, text.decode("utf-8", "replace")


def _timed_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("the mail server did not answer in time"))


class _Client(asyncio.Protocol):
    """One SMTP connection: replies are parsed as they arrive and handed to the one command waiting for them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float):
        self.loop = loop
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.lines: list[bytes] = []
        self.replies: collections.deque[tuple[int, str]] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.lost: BaseException | None = None
        self.features: dict[str, str] = {}
        self.awaiting = False  # a command is with the server (its reply not read yet)
        self.deadline = 0.0
        self.on_reply: Callable[[], None] | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            line = buf[start : end + 1]
            start = end + 1
            self.lines.append(line)
            if line[3:4] != b"-":  # "250-..." continues a multi-line reply, "250 ..." ends it
                self.replies.append(_parse(self.lines))
                self.lines = []
        self.buf = buf[start:]
        if len(self.buf) > _MAX_REPLY_BYTES:
            self.lost = smtplib.SMTPResponseException(-1, "reply line too long")
            self.abort()
        if self.replies or self.lost:
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            self.lost = exc or ConnectionResetError("the server closed the connection")
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # commands

    async def reply(self) -> tuple[int, str]:
        while not self.replies:
            if self.lost is not None:
                raise smtplib.SMTPServerDisconnected(f"Connection unexpectedly closed: {self.lost}")
            waiter = self.waiter = self.loop.create_future()
            # Checked by the engine's periodic sweep (``expire``): a timer per reply costs more than the reply.
            self.deadline = self.loop.time() + self.timeout
            try:
                await waiter
            finally:
                self.waiter = None
        self.awaiting = False
        if self.on_reply is not None:
            self.on_reply()
        return self.replies.popleft()

    def expire(self, now: float) -> None:
        if self.waiter is not None and now > self.deadline:
            _timed_out(self.waiter)

    def write(self, data: bytes) -> None:
        if self.lost is not None or self.transport is None:
            raise smtplib.SMTPServerDisconnected(f"Connection unexpectedly closed: {self.lost}")
        self.transport.write(data)

    async def command(self, line: str) -> tuple[int, str]:
        if "\r" in line or "\n" in line:
            raise ValueError("SMTP commands cannot contain line breaks")
        self.write(line.encode("ascii") + CRLF)
        self.awaiting = True
        return await self.reply()

    async def hello(self, name: str) -> None:
        code, text = await self.command(f"EHLO {name}")
        self.features = {}
        if code != 250:
            code, text = await self.command(f"HELO {name}")
            if code != 250:
                raise smtplib.SMTPHeloError(code, text.encode())
            return
        for line in text.split("\n")[1:]:
            name_, _, params = line.strip().partition(" ")
            key = name_.lower()
            if key.startswith("auth="):  # the old form some servers still send
                key, params = "auth", f"{key[5:]} {params}"
            self.features[key] = f"{self.features.get(key, '')} {params}".strip()

    async def login(self, user: str, password: str) -> None:
        if "auth" not in self.features:
            raise smtplib.SMTPNotSupportedError("SMTP AUTH extension not supported by server.")
        mechanisms = self.features["auth"].upper().split()

        def b64(value: str) -> str:
            return base64.b64encode(value.encode("utf-8")).decode("ascii")

        if "PLAIN" in mechanisms:
            code, text = await self.command("AUTH PLAIN " + b64(f"\0{user}\0{password}"))
        elif "LOGIN" in mechanisms:
            code, text = await self.command("AUTH LOGIN")
            if code == 334:
                code, text = await self.command(b64(user))
            if code == 334:
                code, text = await self.command(b64(password))
        else:
            raise smtplib.SMTPException("No suitable authentication method found (PLAIN or LOGIN).")
        if code not in (235, 503):  # 503: already authenticated
            raise smtplib.SMTPAuthenticationError(code, text.encode())

    def abort(self) -> None:
        if self.lost is None:
            self.lost = ConnectionAbortedError("connection dropped by the engine")
        if self.transport is not None:
            self.transport.abort()

    def quit(self) -> None:
        """QUIT without waiting for the answer; the transport flushes it before closing."""
        if self.transport is not None and self.lost is None:
            with contextlib.suppress(Exception):
                self.transport.write(b"QUIT" + CRLF)
            self.transport.close()


def _path(address: str) -> str:
    return f"<{address}>" if _PLAIN_ADDRESS_RE.match(address) else smtplib.quoteaddr(address)


class _NeedBatch:
    """A connection needs the driver to claim the next batch."""


_NEED_BATCH = _NeedBatch()


class _Abandoned(Exception):
    """The commit point refused the message (the row is not ours any more, or the worker is stopping)."""


class LoopEngine:
    """Drives ``connections`` SMTP connections on one event loop; the database work runs between loop runs."""

    def __init__(
        self,
        send_id: int,
        backend: DjangoSMTPBackend,
        render_batch: RenderBatch,
        flush: FlushResults,
        *,
        connections: int,
        batch_size: int,
        lease_seconds: float,
        limiter: RateLimiter,
        out_of_time: Callable[[], bool],
    ):
        self.send_id = send_id
        self.backend = backend
        self.render_batch = render_batch
        self.flush = flush
        self.connections = max(1, connections)
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.limiter = limiter
        self.out_of_time = out_of_time
        self.timeout = float(backend.timeout) if backend.timeout else _DEFAULT_TIMEOUT_S
        self.gather_s = float(setting("LOOPLINE_EMAIL_COMMIT_GATHER_MS", _COMMIT_GATHER_S * 1000)) / 1000
        self.gather_count = max(1, self.connections // 2)
        self.progress = Progress()
        self.loop = asyncio.new_event_loop()
        self.wake: asyncio.Future[None] | None = None
        # Claimed batches: the one being rendered, and one claimed ahead so a connection rarely waits for a claim.
        self.current: tuple[Iterator[Outgoing | Result], str] | None = None
        self.ahead: collections.deque[tuple[Iterator[Outgoing | Result], str]] = collections.deque()
        self.batch_waiters: list[asyncio.Future[None]] = []
        # A few messages rendered ahead, so a connection that gets its 250 starts the next message at once.
        self.rendered: collections.deque[Outgoing] = collections.deque()
        self.render_target = self.connections
        self.render_scheduled = False
        self.exhausted = False
        self.failure: BaseException | None = None  # rendering failed: stop handing out messages
        self.ready: list[tuple[Outgoing, _Client, asyncio.Future[bool]]] = []
        self.commit_due = False
        self.gather_timer: asyncio.TimerHandle | None = None
        self.pending: list[Result] = []
        self.last_flush = time.monotonic()
        self.leases: dict[str, tuple[float, list[int]]] = {}  # owner -> (last renewed, its rows)
        self.clients: set[_Client] = set()

    # --- inside the loop ---------------------------------------------------------------------------------------

    def _wake(self) -> None:
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    def _finished(self, result: Result) -> None:
        self.progress.count(result)
        self.pending.append(result)
        if len(self.pending) >= 200:
            self._wake()

    def _render_one(self) -> Outgoing | _NeedBatch | None:
        """The next message of the claimed batches (early results are recorded on the way); None when there is
        nothing more to send."""
        while self.failure is None:
            if self.current is None:
                if self.ahead:
                    self.current = self.ahead.popleft()
                    self._wake()  # the driver claims the next batch ahead
                elif self.exhausted:
                    return None
                else:
                    self._wake()
                    return _NEED_BATCH
            items, owner = self.current
            try:
                item = next(items, None)
            except Exception as exc:  # handed to the driver, which raises it once the connections are done
                self.failure = exc
                self._wake()
                return None
            if item is None:
                self.current = None
                continue
            if isinstance(item, Result):
                self._finished(item)
                continue
            item.owner = owner
            return item
        return None

    def _render_ahead(self) -> None:
        # Runs as its own loop callback, one message per loop iteration: the replies that arrived meanwhile are
        # answered first, so the mail server does not wait for rendering.
        self.render_scheduled = False
        if len(self.rendered) < self.render_target:
            item = self._render_one()
            if isinstance(item, Outgoing):
                self.rendered.append(item)
                self._schedule_render()

    def _schedule_render(self) -> None:
        if not self.render_scheduled and len(self.rendered) < self.render_target and self.failure is None:
            self.render_scheduled = True
            self.loop.call_soon(self._render_ahead)

    async def _next_message(self) -> Outgoing | None:
        while self.failure is None:
            if self.rendered:
                item: Outgoing | _NeedBatch | None = self.rendered.popleft()
            else:
                item = self._render_one()
            if isinstance(item, _NeedBatch):
                waiter = self.loop.create_future()
                self.batch_waiters.append(waiter)
                await waiter
                continue
            if item is None:
                return None
            self._schedule_render()
            limiter = self.limiter
            if limiter.interval:
                now = time.monotonic()
                slot = max(limiter.next_at, now)
                limiter.next_at = slot + limiter.interval
                if slot > now:
                    await asyncio.sleep(slot - now)
            return item
        return None

    def _commit_point(self, msg: Outgoing, client: _Client) -> asyncio.Future[bool]:
        waiter: asyncio.Future[bool] = self.loop.create_future()
        self.ready.append((msg, client, waiter))
        if len(self.ready) >= self.gather_count or self._server_running_dry():
            self._request_commit()
        elif self.gather_timer is None:
            # Others are probably about to get there too: one ledger write covers them all.
            self.gather_timer = self.loop.call_later(self.gather_s, self._request_commit)
        return waiter

    def _server_running_dry(self) -> bool:
        # Waiting to gather more commit points only pays while the server has other connections' commands to work
        # on; when it is about to run out, the connections waiting here are what it needs next.
        return sum(c.awaiting and c.lost is None for c in self.clients) <= 1

    def _after_reply(self) -> None:
        if self.ready and not self.commit_due and self._server_running_dry():
            self._request_commit()

    def _request_commit(self) -> None:
        self.commit_due = True
        self._wake()

    async def _open(self) -> _Client:
        b = self.backend
        loop = self.loop
        context = b.ssl_context if b.use_ssl else None
        _transport, client = await asyncio.wait_for(
            loop.create_connection(lambda: _Client(loop, self.timeout), b.host, int(b.port), ssl=context),
            self.timeout,
        )
        self.clients.add(client)
        client.on_reply = self._after_reply
        try:
            code, text = await client.reply()
            if code != 220:
                raise smtplib.SMTPConnectError(code, text.encode())
            local_name = DNS_NAME.get_fqdn()
            await client.hello(local_name)
            if b.use_tls and not b.use_ssl:
                if "starttls" not in client.features:
                    raise smtplib.SMTPNotSupportedError("STARTTLS extension not supported by server.")
                code, text = await client.command("STARTTLS")
                if code != 220:
                    raise smtplib.SMTPResponseException(code, text.encode())
                assert client.transport is not None
                tls = await asyncio.wait_for(
                    loop.start_tls(client.transport, client, b.ssl_context, server_hostname=b.host), self.timeout
                )
                if tls is None:
                    raise smtplib.SMTPServerDisconnected("Connection closed during the TLS handshake")
                client.transport = tls  # type: ignore[assignment]
                await client.hello(local_name)  # capabilities may change once encrypted (RFC 3207)
            if b.username and b.password:
                await client.login(b.username, b.password)
        except BaseException:
            client.abort()
            self.clients.discard(client)
            raise
        return client

    async def _refused(self, client: _Client, msg: Outgoing, code: int, text: str) -> None:
        # 5xx: a hard bounce ([M26]); 4xx: before the commit point, so safe to try again later.
        outcome = "bounced" if 500 <= code < 600 else "retry"
        self._finished(Result(msg.delivery_id, outcome, code, f"{code} {text}"[:300], msg.prospect_id))
        try:
            code, _ = await client.command("RSET")
        except Exception:  # the refusal is recorded; a connection that cannot reset is only dropped
            code = -1
        if code != 250:
            client.abort()

    async def _send(self, client: _Client, msg: Outgoing) -> None:
        code, text = await client.command(f"MAIL FROM:{_path(msg.envelope_from)}")
        if code != 250:
            return await self._refused(client, msg, code, text)
        code, text = await client.command(f"RCPT TO:{_path(msg.to)}")
        if code not in (250, 251):
            return await self._refused(client, msg, code, text)
        code, text = await client.command("DATA")
        if code != 354:
            return await self._refused(client, msg, code, text)
        body = msg.raw
        if body.startswith(b".") or b"\n." in body:  # rare (base64 never has a dot): skip the regex otherwise
            body = _DOT_RE.sub(b"..", body)
        if not body.endswith(CRLF):
            body += CRLF
        client.write(body)
        # The server has the whole message but the final dot: the driver commits, writes the dot, then answers.
        if not await self._commit_point(msg, client):
            raise _Abandoned
        code, text = await client.reply()
        if code == 250:
            self._finished(Result(msg.delivery_id, "sent", code, "", msg.prospect_id))
        else:
            outcome = "bounced" if 500 <= code < 600 else "failed"  # after the commit point: never retried
            self._finished(Result(msg.delivery_id, outcome, code, f"{code} {text}"[:300], msg.prospect_id))

    async def _connection(self) -> None:
        client: _Client | None = None
        try:
            while (msg := await self._next_message()) is not None:
                try:
                    if client is not None and client.lost is not None:
                        self.clients.discard(client)  # closed by the server, or after a failed RSET
                        client = None
                    if client is None:
                        client = await self._open()
                    await self._send(client, msg)
                except _Abandoned:
                    # Abandon this DATA (the server discards an unfinished message): drop the connection.
                    assert client is not None
                    client.abort()
                    self.clients.discard(client)
                    client = None
                except Exception as exc:  # SMTP, socket, timeout, a malformed address: the connection goes on
                    # Before the commit point the row stays queued and is retried; after it, it stays handed over
                    # (the "retry" update only touches queued rows).
                    if client is not None:
                        client.abort()
                        self.clients.discard(client)
                    client = None
                    self._finished(
                        Result(msg.delivery_id, "retry", detail=f"{type(exc).__name__}: {exc}"[:300],
                               prospect_id=msg.prospect_id)
                    )
        finally:
            if client is not None:
                client.quit()
                self.clients.discard(client)
            self._wake()

    # --- the driver (database work, loop stopped) ---------------------------------------------------------------

    def _commit_ready(self) -> None:
        self.commit_due = False
        if self.gather_timer is not None:
            self.gather_timer.cancel()
            self.gather_timer = None
        ready, self.ready = self.ready, []
        if not ready:
            return
        committed: set[int] = set()
        if self.failure is None:
            by_owner: dict[str, list[int]] = {}
            for m, client, waiter in ready:
                if client.lost is not None:
                    # The connection broke before the commit point: the row stays queued and is retried.
                    waiter.set_exception(smtplib.SMTPServerDisconnected(f"Connection lost: {client.lost}"))
                    continue
                by_owner.setdefault(m.owner, []).append(m.delivery_id)
            clients = {m.delivery_id: client for m, client, _waiter in ready}

            def complete(ours: set[int]) -> None:
                # Commit point passed: complete the messages on the wire right away (a broken connection shows
                # when its coroutine reads the reply).
                for delivery_id in ours:
                    client = clients.get(delivery_id)
                    if client is not None and client.transport is not None:
                        with contextlib.suppress(Exception):
                            client.transport.write(b"." + CRLF)
                        client.awaiting = True

            for owner, ids in by_owner.items():
                committed |= commit_and_complete(ids, owner, complete)
        for m, _client, waiter in ready:
            if not waiter.done():
                waiter.set_result(m.delivery_id in committed)

    def _claim_ahead(self) -> None:
        while not self.exhausted and (len(self.ahead) < 1 or self.batch_waiters):
            rows, owner = ([], "") if self.out_of_time() else claim(self.send_id, self.batch_size, self.lease_seconds)
            if not rows:
                self.exhausted = True
                break
            self.leases[owner] = (time.monotonic(), [r.pk for r in rows])
            self.ahead.append((self.render_batch(rows), owner))
            if self.batch_waiters:
                break
        if self.batch_waiters and (self.ahead or self.exhausted):
            waiters, self.batch_waiters = self.batch_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def _maintain(self, force_flush: bool = False) -> None:
        now_m = time.monotonic()
        # Keep our claims alive while we work through them (a slow machine must not lose its leases).
        for owner, (renewed, ids) in list(self.leases.items()):
            if now_m - renewed > self.lease_seconds / 3:
                # By primary key: the owner column has no index, and the ledger of a big send has 100,000s of rows.
                still = Delivery.objects.filter(pk__in=ids, owner=owner, status=Delivery.Status.QUEUED).update(
                    locked_until=timezone.now() + dt.timedelta(seconds=self.lease_seconds)
                )
                if still:
                    self.leases[owner] = (now_m, ids)
                else:
                    del self.leases[owner]
        if self.pending and (force_flush or len(self.pending) >= 200 or now_m - self.last_flush > 0.5):
            pending, self.pending = self.pending, []
            self.flush(pending)
            self.last_flush = time.monotonic()

    def run(self) -> Progress:
        loop = self.loop
        relaxed = _relax_commit_durability()
        tasks: list[asyncio.Task[None]] = []
        clean = False
        try:
            tasks = [loop.create_task(self._connection()) for _ in range(self.connections)]
            next_sweep = 0.0
            while True:
                if self.commit_due:
                    self._commit_ready()
                if self.failure is not None:
                    self.exhausted = True  # claim nothing more; waiting connections are told to stop
                self._claim_ahead()
                self._maintain()
                if all(t.done() for t in tasks):
                    break
                now_l = loop.time()
                if now_l >= next_sweep:
                    next_sweep = now_l + _SWEEP_S
                    for client in list(self.clients):
                        client.expire(now_l)
                self.wake = loop.create_future()
                # Flushes, lease renewals and reply timeouts also run when nothing else happens.
                tick = loop.call_later(_SWEEP_S, self._wake)
                loop.run_until_complete(self.wake)
                tick.cancel()
            for t in tasks:
                t.result()  # a bug in a connection coroutine surfaces here
            if self.failure is not None:
                raise RuntimeError("rendering failed") from self.failure
            clean = True
        finally:
            if not clean:
                # Connections waiting for the commit point (or mid-message) abandon their DATA: their rows stay
                # queued for the next worker. Committed messages keep their dot (already written).
                for client in list(self.clients):
                    client.abort()
                for t in tasks:
                    t.cancel()
                with contextlib.suppress(BaseException):
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            with contextlib.suppress(BaseException):
                for _ in range(2):
                    loop.run_until_complete(asyncio.sleep(0))  # let closing transports flush their QUIT
            loop.close()
            try:
                self._maintain(force_flush=True)
            finally:
                if relaxed:
                    from django.db import connection

                    with contextlib.suppress(Exception), connection.cursor() as cursor:
                        cursor.execute("RESET synchronous_commit")
        return self.progress

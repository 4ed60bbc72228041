"""The single-threaded SMTP engine (async_engine) against real servers: refusals at every step, a server that never
answers, one that drops the connection, STARTTLS, implicit TLS and AUTH ([M29], [M30])."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import threading

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from .conftest import Sink, free_port

pytestmark = pytest.mark.django_db


def _queue(bu, email, prospects, key="async-engine"):
    from loopline.emails import services
    from loopline.emails.models import EmailSend

    services.send_to_prospects(
        bu, email.pk, [p.pk for p in prospects], kind="program", source="test", source_id=None, dedupe_key=key
    )
    return EmailSend.objects.get(bu=bu, dedupe_key=key)


def _run(send, **options):
    from loopline.emails import sending, services

    return sending.run_engine(send.pk, services._BatchRenderer(send), services._flush(send), **options)


def _statuses(send) -> dict[str, str]:
    from loopline.emails.models import Delivery

    return dict(Delivery.objects.filter(send=send).values_list("address", "status"))


def _use(settings, port: int, **options) -> None:
    settings.MAILERS = {"default": {"BACKEND": "django.core.mail.backends.smtp.EmailBackend",
                                    "OPTIONS": {"host": "127.0.0.1", "port": port, "timeout": 5, **options}}}


def test_the_default_smtp_mailer_uses_the_loop_engine_and_others_keep_the_threads(settings, smtp_sink):
    from django.core.mail import mailers
    from django.core.mail.backends.smtp import EmailBackend

    from loopline.emails import async_engine

    assert async_engine.usable(mailers["default"])

    class Custom(EmailBackend):
        pass

    assert not async_engine.usable(Custom(alias="default", host="127.0.0.1"))
    settings.LOOPLINE_EMAIL_ENGINE = "threads"
    assert not async_engine.usable(mailers["default"])


@pytest.mark.parametrize("engine", ["loop", "threads"])
def test_both_engines_send_every_message_once(settings, bu, smtp_sink, make_email, make_prospects, engine):
    settings.LOOPLINE_EMAIL_ENGINE = engine
    prospects = make_prospects(23)
    send = _queue(bu, make_email(), prospects)
    progress = _run(send, connections=3, batch_size=5)
    assert progress.sent == 23
    assert sorted(m["to"][0] for m in smtp_sink.messages) == sorted(p.email for p in prospects)
    assert set(_statuses(send).values()) == {"sent"}


class Refusing(Sink):
    """Answers MAIL, RCPT or DATA (before the body) or the end of DATA with the code set for a recipient."""

    def __init__(self):
        super().__init__()
        self.at: dict[str, tuple[str, str]] = {}  # address -> (step, reply)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        step, reply = self.at.get(address.lower(), ("", ""))
        if step == "rcpt":
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        step, reply = self.at.get(envelope.rcpt_tos[0].lower(), ("", ""))
        if step == "data":
            return reply
        return await super().handle_DATA(server, session, envelope)


def test_refusals_before_the_commit_point_bounce_or_retry_and_after_it_are_never_retried(
    settings, bu, make_email, make_prospects
):
    from loopline.emails.models import Delivery
    from loopline.prospects.models import Activity, ActivityType

    sink = Refusing()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        _use(settings, port)
        ok, rcpt_5xx, rcpt_4xx, data_5xx, data_4xx = make_prospects(5)
        sink.at = {rcpt_5xx.email: ("rcpt", "550 5.1.1 No such user"),
                   rcpt_4xx.email: ("rcpt", "451 4.3.0 Try again later"),
                   data_5xx.email: ("data", "554 5.7.1 Rejected as spam"),
                   data_4xx.email: ("data", "451 4.3.0 Local problem")}
        send = _queue(bu, make_email(), [ok, rcpt_5xx, rcpt_4xx, data_5xx, data_4xx])
        progress = _run(send, connections=2)
    finally:
        controller.stop()
    assert [m["to"] for m in sink.messages] == [[ok.email]]
    statuses = _statuses(send)
    assert statuses[ok.email] == "sent"
    assert statuses[rcpt_5xx.email] == "failed"  # a hard bounce ([M26])
    assert statuses[rcpt_4xx.email] == "queued"  # before the commit point: retried later
    # After the final dot the row was committed: whatever the answer, it is never sent again.
    assert statuses[data_5xx.email] == "failed"
    assert statuses[data_4xx.email] == "failed"
    assert (progress.sent, progress.bounced, progress.retried, progress.failed) == (1, 2, 1, 1)
    retry = Delivery.objects.get(send=send, address=rcpt_4xx.email)
    assert retry.owner == "" and retry.next_run_at is not None and "451" in retry.last_error
    assert Activity.objects.filter(prospect=rcpt_5xx, type=ActivityType.EMAIL_HARD_BOUNCE).exists()


def test_a_refused_connection_leaves_every_row_queued(settings, bu, make_email, make_prospects):
    port = free_port()  # nothing listens there
    _use(settings, port)
    prospects = make_prospects(3)
    send = _queue(bu, make_email(), prospects)
    progress = _run(send, connections=2)
    assert progress.sent == 0 and progress.retried == 3
    assert set(_statuses(send).values()) == {"queued"}


class _RawServer:
    """A TCP server speaking just enough SMTP, run by ``script(conn)`` in a thread per connection."""

    def __init__(self, script):
        self.script = script
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        with conn, conn.makefile("rb") as f, contextlib.suppress(OSError):  # the client went away
            self.script(conn, f, self.received)

    def close(self):
        self.sock.close()


def _greet(conn, f):
    conn.sendall(b"220 test ESMTP\r\n")
    f.readline()  # EHLO
    conn.sendall(b"250-test\r\n250 8BITMIME\r\n")


def test_a_server_that_stops_answering_times_out_and_the_rows_stay_queued(settings, bu, make_email, make_prospects):
    stop = threading.Event()

    def silent_after_mail(conn, f, received):
        _greet(conn, f)
        received.append(f.readline())  # MAIL ... and then nothing
        stop.wait(30)

    server = _RawServer(silent_after_mail)
    try:
        _use(settings, server.port, timeout=0.5)
        prospects = make_prospects(2)
        send = _queue(bu, make_email(), prospects)
        progress = _run(send, connections=1)
    finally:
        stop.set()
        server.close()
    assert progress.sent == 0 and progress.retried == 2
    assert set(_statuses(send).values()) == {"queued"}
    from loopline.emails.models import Delivery

    assert all("Timeout" in e for e in Delivery.objects.filter(send=send).values_list("last_error", flat=True))


def test_a_connection_dropped_mid_data_never_sends_twice(settings, bu, smtp_sink, make_email, make_prospects):
    """The server drops the connection while the body arrives: the message is not sent, its row is either queued for
    a retry (the drop was seen before the commit point) or committed and in doubt — never sent twice."""

    def drop_in_data(conn, f, received):
        _greet(conn, f)
        for reply in (b"250 OK\r\n", b"250 OK\r\n", b"354 go on\r\n"):  # MAIL, RCPT, DATA
            received.append(f.readline())
            conn.sendall(reply)
        f.readline()  # the first line of the body
        conn.shutdown(socket.SHUT_RDWR)

    server = _RawServer(drop_in_data)
    try:
        _use(settings, server.port)
        (p,) = make_prospects(1)
        send = _queue(bu, make_email(), [p])
        progress = _run(send, connections=1)
    finally:
        server.close()
    assert progress.sent == 0
    status = _statuses(send)[p.email]
    assert status in ("queued", "committed")
    # A second worker against a working server completes only what was never committed.
    from loopline.emails.models import Delivery

    Delivery.objects.filter(send=send, status="queued").update(next_run_at=dt.datetime.now(dt.UTC))
    _use(settings, smtp_sink.port)
    _run(send, connections=1)
    assert len(smtp_sink.messages) == (1 if status == "queued" else 0)


def test_a_server_closing_after_a_421_leaves_the_row_queued(settings, bu, make_email, make_prospects):
    def busy(conn, f, received):
        _greet(conn, f)
        f.readline()  # MAIL
        conn.sendall(b"421 4.3.2 Service shutting down\r\n")

    server = _RawServer(busy)
    try:
        _use(settings, server.port)
        (p,) = make_prospects(1)
        send = _queue(bu, make_email(), [p])
        progress = _run(send, connections=1)
    finally:
        server.close()
    assert progress.retried == 1
    assert _statuses(send) == {p.email: "queued"}


# --- TLS and AUTH ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, trusted by the client through ``ssl.create_default_context``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


@pytest.fixture
def trust(monkeypatch, certificate):
    original = ssl.create_default_context

    def create_default_context(*args, **kwargs):
        context = original(*args, **kwargs)
        context.load_verify_locations(certificate[0])
        return context

    monkeypatch.setattr(ssl, "create_default_context", create_default_context)


def _server_context(certificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


class _Logins:
    def __init__(self):
        self.seen: list[tuple[str, str]] = []

    def __call__(self, server, session, envelope, mechanism, auth_data):
        user, password = auth_data.login.decode(), auth_data.password.decode()
        self.seen.append((mechanism, user))
        return AuthResult(success=(user, password) == ("mailer", "s3cret"))


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_starttls_then_auth(settings, bu, make_email, make_prospects, certificate, trust, mechanism):
    sink, logins = Sink(), _Logins()
    port = free_port()
    excluded = ["LOGIN"] if mechanism == "PLAIN" else ["PLAIN"]
    controller = Controller(sink, hostname="127.0.0.1", port=port, tls_context=_server_context(certificate),
                            require_starttls=True, authenticator=logins, auth_required=True,
                            auth_exclude_mechanism=excluded)
    controller.start()
    try:
        _use(settings, port, use_tls=True, username="mailer", password="s3cret")
        prospects = make_prospects(3)
        send = _queue(bu, make_email(), prospects)
        progress = _run(send, connections=2)
    finally:
        controller.stop()
    assert progress.sent == 3
    assert sorted(m["to"][0] for m in sink.messages) == sorted(p.email for p in prospects)
    assert logins.seen and {m for m, _ in logins.seen} == {mechanism}


def test_a_wrong_password_sends_nothing_and_leaves_the_rows_queued(
    settings, bu, make_email, make_prospects, certificate, trust
):
    sink, logins = Sink(), _Logins()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, tls_context=_server_context(certificate),
                            require_starttls=True, authenticator=logins, auth_required=True)
    controller.start()
    try:
        _use(settings, port, use_tls=True, username="mailer", password="wrong")
        prospects = make_prospects(2)
        send = _queue(bu, make_email(), prospects)
        progress = _run(send, connections=1)
    finally:
        controller.stop()
    assert progress.sent == 0 and not sink.messages
    assert set(_statuses(send).values()) == {"queued"}


def test_implicit_tls(settings, bu, make_email, make_prospects, certificate, trust):
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, ssl_context=_server_context(certificate))
    controller.start()
    try:
        _use(settings, port, use_ssl=True)
        prospects = make_prospects(2)
        send = _queue(bu, make_email(), prospects)
        progress = _run(send, connections=2)
    finally:
        controller.stop()
    assert progress.sent == 2
    assert sorted(m["to"][0] for m in sink.messages) == sorted(p.email for p in prospects)


def test_a_server_without_starttls_is_not_sent_to_in_clear_text(settings, bu, smtp_sink, make_email, make_prospects):
    _use(settings, smtp_sink.port, use_tls=True)
    prospects = make_prospects(1)
    send = _queue(bu, make_email(), prospects)
    progress = _run(send, connections=1)
    assert progress.sent == 0 and not smtp_sink.messages
    assert set(_statuses(send).values()) == {"queued"}


def test_lease_renewal_touches_only_this_workers_queued_rows(settings, bu, smtp_sink, make_email, make_prospects):
    from django.core.mail import mailers
    from django.utils import timezone

    from loopline.emails import async_engine, sending, services
    from loopline.emails.models import Delivery

    send = _queue(bu, make_email(), make_prospects(4))
    rows, owner = sending.claim(send.pk, 3, 30)
    mine = [r.pk for r in rows]
    other = Delivery.objects.filter(send=send).exclude(pk__in=mine).get()
    Delivery.objects.filter(pk=mine[0]).update(status="committed")
    before = timezone.now()
    Delivery.objects.filter(pk__in=mine).update(locked_until=before)
    engine = async_engine.LoopEngine(send.pk, mailers["default"], services._BatchRenderer(send), services._flush(send),
                                     connections=1, batch_size=10, lease_seconds=30, limiter=sending.RateLimiter(0),
                                     out_of_time=lambda: False)
    try:
        engine.leases[owner] = (0.0, mine)  # renewed long ago
        engine._maintain()
    finally:
        engine.loop.close()
    renewed = dict(Delivery.objects.filter(pk__in=[*mine, other.pk]).values_list("pk", "locked_until"))
    assert renewed[mine[0]] == before  # committed: not ours to keep
    assert all(renewed[pk] > before for pk in mine[1:])
    assert renewed[other.pk] is None  # never claimed


def test_a_big_list_send_refreshes_planner_statistics(monkeypatch, bu, marketing_access, make_email, make_prospects):
    from loopline.automation.models import ListMembership, ProspectList
    from loopline.emails import services

    prospects = make_prospects(3)
    pl = ProspectList.objects.create(bu=bu, name="All")
    ListMembership.objects.bulk_create([ListMembership(prospect_list=pl, prospect=p) for p in prospects])
    calls = []
    original = services._refresh_planner_statistics
    monkeypatch.setattr(services, "ANALYZE_AFTER", 2)
    monkeypatch.setattr(services, "_refresh_planner_statistics", lambda: calls.append(original()))
    send = services.create_list_send(marketing_access, make_email(), [pl.pk])
    assert services.start_send(send.pk) == 3
    assert len(calls) == 1  # ANALYZE on PostgreSQL, nothing on SQLite; either way it runs without error


@pytest.mark.django_db(transaction=True)  # the engine commits for real: no test transaction around it
def test_on_postgresql_the_final_dots_go_out_before_the_commit_reply_is_read(bu, make_email, make_prospects):
    # [M29] the commit point's crash window: the dots are written between sending COMMIT and reading its reply.
    from django.db import connection

    from loopline.emails import sending
    from loopline.emails.models import Delivery

    if connection.vendor != "postgresql":
        pytest.skip("the pipelined commit point is PostgreSQL's (SQLite commits locally)")
    from psycopg import pq

    send = _queue(bu, make_email(), make_prospects(4), key="pipelined")
    rows, owner = sending.claim(send.pk, 3, 60)
    other = Delivery.objects.filter(send=send).exclude(pk__in=[r.pk for r in rows]).first()
    seen: dict = {}

    def complete(ours: set[int]) -> None:
        seen["ours"] = ours
        seen["status"] = connection.connection.pgconn.transaction_status  # COMMIT sent, its reply not read yet

    ids = [r.pk for r in rows] + [other.pk]  # a row this worker does not own is never committed nor completed
    assert sending.commit_and_complete(ids, owner, complete) == {r.pk for r in rows}
    assert seen == {"ours": {r.pk for r in rows}, "status": pq.TransactionStatus.ACTIVE}
    assert connection.connection.pgconn.transaction_status == pq.TransactionStatus.IDLE
    assert set(Delivery.objects.filter(pk__in=[r.pk for r in rows]).values_list("status", flat=True)) == {"committed"}
    assert Delivery.objects.get(pk=other.pk).status == "queued"

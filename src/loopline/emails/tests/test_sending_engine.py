"""The send engine under load shapes: several connections, several claims, lost leases, a failing renderer, SMTP
transparency ([M29], [M30]). Everything goes through a real aiosmtpd server."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def _queue(bu, email, prospects, key="engine"):
    from loopline.emails import services
    from loopline.emails.models import EmailSend

    services.send_to_prospects(
        bu, email.pk, [p.pk for p in prospects], kind="program", source="test", source_id=None, dedupe_key=key
    )
    return EmailSend.objects.get(bu=bu, dedupe_key=key)


def _run(send, render=None, **options):
    from loopline.emails import sending, services

    return sending.run_engine(
        send.pk, render or services._BatchRenderer(send), services._flush(send), **options
    )


def test_many_recipients_over_several_connections_each_get_their_own_message_once(
    bu, smtp_sink, make_email, make_prospects
):
    from loopline.emails.models import Delivery
    from loopline.prospects.models import Activity, ActivityType

    email = make_email()
    prospects = make_prospects(45)
    send = _queue(bu, email, prospects)
    # Small claims: the engine goes through several batches while earlier messages are still on the wire.
    progress = _run(send, connections=4, batch_size=10)
    assert progress.sent == 45
    received = [m["to"][0] for m in smtp_sink.messages]
    assert sorted(received) == sorted(p.email for p in prospects)  # [M30] everyone once, nobody twice
    rows = Delivery.objects.filter(send=send)
    assert {r.status for r in rows} == {"sent"} and all(r.sent_at for r in rows)
    # Personalisation and the RFC 8058 link stay per recipient.
    unsubscribe_links = set()
    for p in prospects:
        msg = smtp_sink.to(p.email)[0]["msg"]
        assert msg["Subject"] == f"Hi {p.first_name}"
        unsubscribe_links.add(msg["List-Unsubscribe"])
    assert len(unsubscribe_links) == 45
    # One "email sent" activity per recipient, on the send and its campaign.
    sent = Activity.objects.filter(bu=bu, type=ActivityType.EMAIL_SENT)
    assert sorted(sent.values_list("prospect_id", flat=True)) == sorted(p.pk for p in prospects)
    a = sent.first()
    assert a is not None
    assert (a.asset_type, a.asset_id, a.title, a.data, a.is_machine) == (
        "email_send",
        send.pk,
        email.name,
        {},
        False,
    )


def test_text_lines_starting_with_a_dot_arrive_intact(bu, smtp_sink, make_email, make_prospects):
    """SMTP ends a message at a line holding a single dot: the engine must dot-stuff such lines (RFC 5321 4.5.2)."""
    email = make_email(
        text_body="Hello {{ prospect.first_name }}\n.\n..two dots\n.net is a domain\n"
        "{{ unsubscribe_url }} {{ preferences_url }}\n"
    )
    a, b = make_prospects(2)
    send = _queue(bu, email, [a, b])
    _run(send, connections=1)
    assert sorted(m["to"][0] for m in smtp_sink.messages) == sorted([a.email, b.email])
    text = smtp_sink.to(a.email)[0]["msg"].get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "\n.\n..two dots\n.net is a domain\n" in text


def test_a_row_taken_by_another_worker_before_the_commit_point_is_not_sent_by_this_one(
    bu, smtp_sink, make_email, make_prospects
):
    """[M30] The commit point is fenced by the claim's owner: a worker that lost a row abandons its message (the
    server discards an unfinished DATA) and finishes the others."""
    from loopline.emails import services
    from loopline.emails.models import Delivery

    email = make_email()
    prospects = make_prospects(6)
    send = _queue(bu, email, prospects)
    stolen = Delivery.objects.get(send=send, prospect=prospects[2])
    renderer = services._BatchRenderer(send)

    def render(rows):
        # Another worker re-claims one row after our claim (its lease ran out while we were slow).
        Delivery.objects.filter(pk=stolen.pk).update(owner="another-worker")
        return renderer(rows)

    progress = _run(send, render=render, connections=2)
    assert progress.sent == 5
    assert stolen.address not in [m["to"][0] for m in smtp_sink.messages]
    assert len(smtp_sink.messages) == 5
    stolen.refresh_from_db()
    assert (stolen.status, stolen.owner) == ("queued", "another-worker")  # still the other worker's to send


def test_a_renderer_failure_stops_the_worker_and_leaves_unsent_rows_queued(
    bu, smtp_sink, make_email, make_prospects
):
    from loopline.emails import services
    from loopline.emails.models import Delivery

    email = make_email()
    prospects = make_prospects(5)
    send = _queue(bu, email, prospects)
    renderer = services._BatchRenderer(send)

    def render(rows):
        items = renderer(rows)

        def broken():
            yield next(items)
            raise RuntimeError("template engine exploded")

        return broken()

    with pytest.raises(RuntimeError, match="rendering failed"):
        _run(send, render=render, connections=2)
    statuses = list(Delivery.objects.filter(send=send).values_list("status", flat=True))
    assert statuses.count("queued") >= 4  # nothing lost: the next worker sends them
    assert len(smtp_sink.messages) == 5 - statuses.count("queued")

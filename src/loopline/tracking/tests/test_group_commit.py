"""The group-commit writer: concurrent requests share commits, every acknowledged row is stored, failures reach every
request of the batch (nothing is acknowledged that was not written)."""

from __future__ import annotations

import threading
import time

import pytest

from loopline.tracking import capture, spool


@pytest.fixture
def spool_writer(settings, tmp_path):
    settings.TRACKING_SPOOL_DIR = str(tmp_path)
    settings.TRACKING_SPOOL = "files"
    settings.TRACKING_GROUP_COMMIT = True
    settings.TRACKING_FSYNC = False
    writer = capture.HitWriter()
    yield writer
    for spool_file in writer._spools:
        spool_file.conn.close()


def _row(i: int) -> tuple:
    return (1, f"{i:032x}", time.time(), 1, '{"ip":"","ua":"","h":[{"t":1,"u":"https://a.test/"}]}')


def _stored(writer) -> list[str]:
    # Each writer thread has its own spool file.
    return [r[0] for w in writer._spools for r in w.conn.execute("SELECT cookie FROM hits ORDER BY id")]


def test_concurrent_writes_share_commits_and_all_land(spool_writer):
    commits = []
    original = spool.SpoolWriter.append

    def counting(self, rows):
        commits.append(len(rows))
        time.sleep(0.005)  # a slow disk: requests pile up behind the commit in flight
        original(self, rows)

    spool.SpoolWriter.append = counting
    try:
        threads = [threading.Thread(target=spool_writer.write, args=([_row(i)],)) for i in range(60)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        spool.SpoolWriter.append = original
    assert sorted(_stored(spool_writer)) == sorted(f"{i:032x}" for i in range(60))
    assert sum(commits) == 60 and len(commits) < 60  # batched


def test_big_batch_is_several_statements_in_one_transaction(spool_writer):
    rows = [_row(i) for i in range(capture.ROWS_PER_STATEMENT * 2 + 7)]
    spool_writer.write(rows)
    assert len(_stored(spool_writer)) == len(rows)


def test_a_failed_commit_fails_every_request_of_the_batch(spool_writer, monkeypatch):
    spool_writer.write([_row(0)])  # opens the spool file

    def broken(self, rows):
        raise OSError("disk full")

    monkeypatch.setattr(spool.SpoolWriter, "append", broken)
    errors = []

    def attempt(i):
        try:
            spool_writer.write([_row(i)])
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(1, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 5
    monkeypatch.undo()
    assert _stored(spool_writer) == [f"{0:032x}"]  # nothing of the failed batch was acknowledged or stored


def test_the_next_batch_commits_while_the_previous_one_waits_for_its_fsync(spool_writer):
    # Two writer threads (the default): a slow commit does not hold up the requests that arrive meanwhile.
    calls: list = []
    overlapped: list[bool] = []
    second_started = threading.Event()
    original = spool.SpoolWriter.append

    def slow(self, rows):
        calls.append(self.path)
        if len(calls) == 1:
            overlapped.append(second_started.wait(10))  # with one writer this times out
        else:
            second_started.set()
        original(self, rows)

    spool.SpoolWriter.append = slow
    try:
        first = threading.Thread(target=spool_writer.write, args=([_row(0)],))
        first.start()
        while not calls:
            time.sleep(0.001)
        second = threading.Thread(target=spool_writer.write, args=([_row(1)],))
        second.start()
        first.join()
        second.join()
    finally:
        spool.SpoolWriter.append = original
    assert overlapped == [True]
    assert len(set(calls)) == 2  # each writer has its own spool file
    assert sorted(_stored(spool_writer)) == [f"{0:032x}", f"{1:032x}"]


def test_a_lone_request_commits_on_its_own_thread(spool_writer):
    # Leader/follower: no writer thread, so a request alone pays no thread hand-off for its commit.
    threads: list[int] = []
    original = spool.SpoolWriter.append

    def recording(self, rows):
        threads.append(threading.get_ident())
        original(self, rows)

    spool.SpoolWriter.append = recording
    try:
        spool_writer.write([_row(0)])
    finally:
        spool.SpoolWriter.append = original
    assert threads == [threading.get_ident()]
    assert _stored(spool_writer) == [f"{0:032x}"]


def test_a_commit_waits_for_announced_requests_and_shares_their_fsync(spool_writer, settings):
    settings.TRACKING_COMMIT_DELAY_MS = 1000
    commits: list[int] = []
    original = spool.SpoolWriter.append

    def counting(self, rows):
        commits.append(len(rows))
        original(self, rows)

    announced = threading.Event()

    def other_request():
        spool_writer.arrive()  # entered the fast path; its rows come a moment later
        announced.set()
        time.sleep(0.1)
        spool_writer.write([_row(1)])
        spool_writer.depart()

    spool.SpoolWriter.append = counting
    try:
        other = threading.Thread(target=other_request)
        other.start()
        announced.wait(5)
        started = time.monotonic()
        spool_writer.write([_row(0)])
        other.join()
    finally:
        spool.SpoolWriter.append = original
    assert commits == [2]  # one fsync for both requests
    assert time.monotonic() - started < 0.9  # it waited for the request, not for the whole delay
    assert sorted(_stored(spool_writer)) == [f"{0:032x}", f"{1:032x}"]


def test_a_request_that_writes_nothing_does_not_hold_up_the_commit(spool_writer, settings):
    settings.TRACKING_COMMIT_DELAY_MS = 1000

    def rejected_request():
        spool_writer.arrive()
        time.sleep(0.1)
        spool_writer.depart()  # e.g. answered 400: no rows

    other = threading.Thread(target=rejected_request)
    other.start()
    time.sleep(0.02)
    started = time.monotonic()
    spool_writer.write([_row(0)])
    assert time.monotonic() - started < 0.9
    other.join()
    assert _stored(spool_writer) == [f"{0:032x}"]
    # Nothing announced any more: the next commit does not wait at all.
    started = time.monotonic()
    spool_writer.write([_row(1)])
    assert time.monotonic() - started < 0.5


@pytest.mark.django_db
def test_without_spool_files_the_leader_writes_the_staging_table(settings):
    # Scale mode (PostgreSQL) and TRACKING_SPOOL=db: the committing request uses its own database connection.
    from loopline.tracking.models import TrackingHit

    settings.TRACKING_SPOOL = "db"
    settings.TRACKING_GROUP_COMMIT = True
    writer = capture.HitWriter()
    writer.write([_row(7), _row(8)])
    assert sorted(TrackingHit.objects.values_list("cookie", flat=True)) == [f"{7:032x}", f"{8:032x}"]

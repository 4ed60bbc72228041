"""The connector chaos scenario and its checker (issue #5 item 7), shared by bench/connector_chaos.py and the short
form in src/loopline/connector/tests/test_chaos.py.

Setup: a crmsandbox seeded with leads, contacts and a few CRM users, a throw-away database (see bench/_common.py),
the connector verified, marketing data sharing rules set (``Region__c = "Chaos BU"`` on leads and contacts; most seeded
records match, the rest must never show up), the initial import run and the connector resumed; the sync worker runs
as ``loopline connector worker`` in a subprocess.

Then ``edits`` random operations (seeded RNG) run from a thread pool while the worker syncs: field edits on both
sides, email changes on both sides, CRM owner changes, opt-outs on both sides, CRM delete / undelete, CRM merges,
lead conversions, MDS flips (the CRM user moves a record out of the BU's sharing rule or back in), new records on
both sides (some CRM ones outside the rule), and values the CRM rejects for a validation reason (a first name longer
than the CRM field [R20], a website breaking a CRM validation rule [R26]). One operation at a time per record (a lock
per record) so the ledger's order is the order the systems saw. Meanwhile the sandbox fails ``fault_rate`` of the API
calls (UNABLE_TO_LOCK_ROW, 503, DROP, LOST_RESPONSE), opens one REQUEST_LIMIT_EXCEEDED window, and the worker is
killed with SIGKILL ``kills`` times and restarted.

Quiescence: faults off; the checker runs until both sides agree and hold still. For every record it computes what the
rules require from the ledger of edits:

* a field edited on one side only → that value on both sides; edited on both sides → the later edit's value, unless
  the two edits are closer than the sync window (``AMBIGUOUS_S`` plus the time the worker was dead or paused in
  between): then either value, but both sides must agree (the default mapping says *use the CRM's value* on conflict,
  and which edits "conflict" depends on when the worker saw them) [R16];
* CRM owner → the prospect's CRM owner [R18]; opt-out → most recently updated field [R16];
* deleted in the CRM → prospect in the recycle bin and flagged CRM-deleted; undeleted → restored [R31];
* merged → loser's prospect recycled (merged into the winner's), winner's prospect linked and live [R32];
* converted → the prospect follows the contact, the lead is never written again [R13];
* rejected values → an open entry in the sync error queue with the CRM's reason, the CRM value unchanged [R20] [R26];
* new assigned prospects → exactly one CRM lead; new CRM leads → exactly one prospect [R10] [R11] [R25];
* MDS ([R35], [R36]): a record that does not match the rule at the end → its prospect in the recycle bin, still linked,
  not flagged CRM-deleted, never duplicated or re-created; matching again → restored and in sync. CRM edits made while
  hidden arrive once it is back; a Loopline edit made while hidden is not written then but is pushed once it is back
  (docs/connector.md), unless the CRM changed the same field since it left (both changed: either value, sides agree
  [R16]). New CRM leads and seeded records outside the rule never become prospects. Edits within the sync window of a
  flip only need both sides to agree.

Edits made after an identity change of their record (delete, undelete, merge, conversion) but within the sync window
of it (``AMBIGUOUS_S`` widened by the blackouts in between: the connector only learns of the change at its next poll),
or before it, only need both sides to agree.

Time the bench fast-forwards (never waits out): the dead worker's outbox leases after a SIGKILL, and the connector's
pause after the REQUEST_LIMIT_EXCEEDED window (``paused_until`` cleared, the worker restarted with SIGTERM).
When the check finds mismatches, the evidence for them (ledger, outbox rows, links, timeline, CRM field history) is
written to a JSON file named in the figures as ``debug_file``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import requests
from _common import connected_bu, log

SRC = Path(__file__).resolve().parent.parent / "src"

AMBIGUOUS_S = 20.0  # two poll intervals at the idle interval: edits closer than this may be seen as one conflict
SETTLE_TIMEOUT_S = 240.0

# Loopline field → (Lead field, Contact field); the fields the scenario edits and the checker compares.
FIELDS: dict[str, tuple[str, str]] = {
    "first_name": ("FirstName", "FirstName"),
    "last_name": ("LastName", "LastName"),
    "email": ("Email", "Email"),
    "job_title": ("Title", "Title"),
    "phone": ("Phone", "Phone"),
    "city": ("City", "MailingCity"),
    "opted_out": ("HasOptedOutOfEmail", "HasOptedOutOfEmail"),
}
EDITABLE = ("first_name", "job_title", "phone", "city")

# Operation mix (relative weights). "mds_flip": the CRM user changes the field of the BU's marketing data sharing
# rule, so the record leaves the BU or comes back ([R35], [R36]) — see ``Scenario.op_mds_flip``.
WEIGHTS: dict[str, float] = {
    "crm_field": 26, "ll_field": 26, "crm_email": 5, "ll_email": 5, "crm_owner": 6, "crm_optout": 5,
    "ll_optout": 5, "crm_delete": 3, "crm_undelete": 2, "crm_merge": 2, "crm_convert": 3, "crm_create": 4,
    "ll_create": 4, "ll_reject": 2, "mds_flip": 3,
}
# Operations that may run on a record the BU does not see (at the moment): edits on either side. The others need a
# shared record (deletes, merges, conversions, rejects have their own rules; mixing them with MDS is out of scope).
HIDDEN_OK = frozenset({"crm_field", "ll_field", "crm_email", "ll_email", "crm_owner", "crm_optout", "ll_optout",
                       "mds_flip"})

# The BU's marketing data sharing rule ([R35]): an unmapped custom text field on Lead and Contact (conversion copies
# custom fields, so a converted lead's contact stays in the BU). Most seeded records match; the rest must never show up.
RULE_FIELD = "Region__c"
RULE_VALUE = "Chaos BU"
OTHER_VALUES = ("Elsewhere", "")  # "" clears the field: not matching either
REGION = {"name": RULE_FIELD, "type": "string", "length": 80, "label": "Region"}
UNSHARED_SEED_SHARE = 0.15


def fault_mix(rate: float) -> dict[str, float]:
    """``rate`` split over the transient faults the connector must ride out."""
    if rate <= 0:
        return {}
    return {"UNABLE_TO_LOCK_ROW": rate * 0.35, "SERVER_UNAVAILABLE": rate * 0.3, "DROP": rate * 0.15,
            "LOST_RESPONSE": rate * 0.2}


# --- the CRM side: sandbox process and a CRM user over REST ----------------------------------------------------------

LOOPLINE_ID = {"name": "Loopline_Id__c", "type": "string", "length": 64, "external_id": True, "unique": True}
WEBSITE_RULE = {"name": "WebsiteFormat", "field": "Website", "condition": "regex", "pattern": "https?://.+",
                "message": "Website must start with http"}


def start_sandbox(*, leads: int, contacts: int, users: int = 4):
    """A crmsandbox seeded with leads, contacts and CRM users (owner changes), the external-id field creates upsert
    on ([R25]) and a Lead validation rule the scenario breaks on purpose."""
    from loopline.connector.tests.sandbox import SandboxProcess, cli, free_port

    data = Path(tempfile.mkdtemp(prefix="loopline-chaos-crm-"))
    port = free_port()
    cli("init", "--data", str(data), "--port", str(port))
    path = data / "config.json"
    config = json.loads(path.read_text())
    config["daily_api_limit"] = 5_000_000
    config.setdefault("custom_fields", {})
    for obj in ("Lead", "Contact"):
        config["custom_fields"][obj] = [*config["custom_fields"].get(obj, []), LOOPLINE_ID, REGION]
    config.setdefault("validation_rules", {})
    config["validation_rules"]["Lead"] = [*config["validation_rules"].get("Lead", []), WEBSITE_RULE]
    path.write_text(json.dumps(config, indent=2))
    cli("seed", "--data", str(data), "--leads", str(leads), "--contacts", str(contacts), "--accounts",
        str(max(1, contacts // 10)), "--users", str(users), timeout=3600)
    sandbox = SandboxProcess(data, port)
    sandbox.serve()
    return sandbox


class CrmError(RuntimeError):
    def __init__(self, status: int, body: Any):
        super().__init__(f"{status}: {str(body)[:300]}")
        self.status, self.body = status, body

    @property
    def code(self) -> str:
        if isinstance(self.body, list) and self.body and isinstance(self.body[0], dict):
            return str(self.body[0].get("errorCode", ""))
        return ""


class CrmUser:
    """The sandbox admin as a CRM user editing records. Its calls see the injected faults too and ride them out:
    transient errors and dropped connections are retried (PATCH/DELETE are idempotent; creates check first)."""

    def __init__(self, crm):
        self.crm = crm
        self.local = threading.local()
        self.token_lock = threading.Lock()
        self.token = crm.admin_token()

    def _session(self) -> requests.Session:
        s = getattr(self.local, "session", None)
        if s is None:
            s = self.local.session = requests.Session()
            s.verify = self.crm.ca_file
            s.trust_env = False
        return s

    def call(self, method: str, path: str, *, tries: int = 60, **kwargs: Any) -> Any:
        url = path if path.startswith("/") else f"/services/data/v59.0/{path}"
        last: Exception | None = None
        for attempt in range(tries):
            try:
                r = self._session().request(method, self.crm.instance_url + url, timeout=60,
                                            headers={"Authorization": f"Bearer {self.token}"}, **kwargs)
            except requests.RequestException as e:  # DROP / LOST_RESPONSE: the write may or may not have happened
                last = e
                self._session().close()
                self.local.session = None
                time.sleep(0.05 * min(attempt + 1, 10))
                continue
            if r.status_code == 401:
                with self.token_lock:
                    self.token = self.crm.admin_token(fresh=True)
                continue
            text = r.text
            if r.status_code >= 500 or "UNABLE_TO_LOCK_ROW" in text or "REQUEST_LIMIT_EXCEEDED" in text:
                last = CrmError(r.status_code, text)
                time.sleep(0.05 * min(attempt + 1, 10) + (0.5 if "REQUEST_LIMIT" in text else 0))
                continue
            body = r.json() if r.content else None
            if r.status_code >= 400:
                raise CrmError(r.status_code, body)
            return body
        raise RuntimeError(f"{method} {url}: still failing after {tries} tries: {last}")

    def create_once(self, sobject: str, values: dict[str, Any], email: str) -> str:
        """A create that a lost answer cannot duplicate: after a dropped call, look the record up by its email."""
        for _ in range(60):
            try:
                r = self._session().post(self.crm.instance_url + f"/services/data/v59.0/sobjects/{sobject}/",
                                         json=values, timeout=60,
                                         headers={"Authorization": f"Bearer {self.token}"})
            except requests.RequestException:
                self.local.session = None
                found = self.query(f"SELECT Id FROM {sobject} WHERE Email = '{email}'")
                if found:
                    return found[0]["Id"]
                continue
            if r.status_code == 401:
                with self.token_lock:
                    self.token = self.crm.admin_token(fresh=True)
                continue
            if r.status_code >= 500 or "UNABLE_TO_LOCK_ROW" in r.text or "REQUEST_LIMIT_EXCEEDED" in r.text:
                time.sleep(0.1)
                continue
            if r.status_code >= 400:
                raise CrmError(r.status_code, r.json() if r.content else None)
            return r.json()["id"]
        raise RuntimeError(f"create {sobject} {email}: still failing")

    def update(self, sobject: str, rid: str, values: dict[str, Any]) -> None:
        self.call("PATCH", f"sobjects/{sobject}/{rid}", json=values)

    def query(self, soql: str, *, all_rows: bool = False) -> list[dict]:
        result = self.call("GET", "queryAll" if all_rows else "query", params={"q": soql})
        records = list(result["records"])
        while not result.get("done", True):
            result = self.call("GET", result["nextRecordsUrl"])
            records += result["records"]
        return records

    def admin(self, name: str, body: dict[str, Any]) -> Any:
        return self.call("POST", f"/_sandbox/{name}", json=body)


# --- ledger and records ----------------------------------------------------------------------------------------------


@dataclass
class Edit:
    t: float
    side: str  # "crm" | "ll"
    field: str
    value: Any


@dataclass
class Rec:
    """One prospect ↔ CRM record pair the scenario works on."""

    key: int
    prospect_id: int
    obj: str  # Lead | Contact
    crm_id: str
    state: str = "alive"  # alive | deleted | merged | rejected
    edits: list[Edit] = field(default_factory=list)
    identity_at: list[float] = field(default_factory=list)  # delete / undelete / merge / conversion times
    shared: bool = True  # the record matches the BU's sharing rule (as the CRM user last set it)
    flips: list[tuple[float, bool]] = field(default_factory=list)  # MDS flips: (time, shared afterwards)
    lead_id: str = ""  # the converted lead
    merged_into: int | None = None  # key of the winner
    reject: dict[str, Any] = field(default_factory=dict)
    owner: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass
class Created:
    side: str  # crm | ll | crm_hidden (a CRM lead the BU's rule does not share: no prospect may appear)
    email: str
    last_name: str
    prospect_id: int | None = None
    crm_id: str = ""


def norm(name: str, value: Any) -> Any:
    if name == "opted_out":
        return bool(value)
    if value is None:
        return ""
    if name == "email":
        return str(value).lower()
    return str(value)


# --- the scenario ----------------------------------------------------------------------------------------------------


class Scenario:
    def __init__(self, *, crm, connector, bu, user, edits: int, fault_rate: float, kills: int, seed: int = 7,
                 threads: int = 4, limit_window_s: float = 4.0, settle_timeout: float = SETTLE_TIMEOUT_S):
        self.crm, self.connector, self.bu, self.user = crm, connector, bu, user
        self.n_edits, self.fault_rate, self.kills, self.threads = edits, fault_rate, kills, threads
        self.limit_window_s, self.settle_timeout = limit_window_s, settle_timeout
        self.rng = random.Random(seed)
        self.rng_lock = threading.Lock()
        self.api = CrmUser(crm)
        self.tag = uuid.uuid4().hex[:6]
        self.recs: list[Rec] = []
        self.created: list[Created] = []
        self.owners: list[str] = []
        self.blackouts: list[tuple[float, float]] = []  # worker dead or paused by the limit window
        self.counts: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.seq = 0
        self.seq_lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.last_edit_at = 0.0
        self.kills_done = 0
        self.started_at = time.time()
        self.limit_paused = False  # the connector paused itself during the REQUEST_LIMIT_EXCEEDED window
        self.limit_seconds = 0.0
        self.last_suspects: dict[str, Rec] = {}
        self.worker_died = ""  # the worker subprocess exited without being killed: its exit code and log tail
        self.worker_log = Path(tempfile.gettempdir()) / f"loopline-chaos-worker-{self.tag}.log"
        self.unshared_seed: list[tuple[str, str]] = []  # (object, id) of seeded records the rule never shared

    # -- setup --
    def load_pool(self) -> None:
        from loopline.prospects.models import Prospect

        rows = Prospect.objects.filter(bu=self.bu, is_deleted=False).values_list(
            "pk", "crm_lead_id", "crm_contact_id", "crm_owner_id")
        for pk, lead, contact, owner in rows:
            if contact:
                self.recs.append(Rec(len(self.recs), pk, "Contact", contact, owner=owner))
            elif lead:
                self.recs.append(Rec(len(self.recs), pk, "Lead", lead, owner=owner))
        users = self.api.query("SELECT Id, Username FROM User WHERE IsActive = true")
        self.owners = [u["Id"] for u in users if u["Id"] != self.connector.connector_user_id]
        log(f"pool: {len(self.recs)} synced records, {len(self.owners)} CRM owners")

    def next_seq(self) -> int:
        with self.seq_lock:
            self.seq += 1
            return self.seq

    def pick(self, *, obj: str | None = None, states: tuple[str, ...] = ("alive",),
             shared: bool | None = True) -> Rec | None:
        """A random record in one of ``states`` (and sharing state, None: either) whose lock is free (taken: the
        caller must release it)."""

        def fits(rec: Rec) -> bool:
            return rec.state in states and (not obj or rec.obj == obj) and (shared is None or rec.shared == shared)

        for _ in range(50):
            with self.rng_lock:
                rec = self.rng.choice(self.recs)
            if not fits(rec):
                continue
            if rec.lock.acquire(blocking=False):
                if fits(rec):
                    return rec
                rec.lock.release()
        return None

    def choose(self) -> str:
        with self.rng_lock:
            names = [k for k, w in WEIGHTS.items() if w > 0]
            return self.rng.choices(names, [WEIGHTS[k] for k in names])[0]

    def value_for(self, name: str) -> Any:
        n = self.next_seq()
        if name == "phone":
            return f"555{n:07d}"
        if name == "email":
            return f"chaos{n}.{self.tag}@chaos.test"
        prefix = {"first_name": "F", "job_title": "T", "city": "C", "last_name": "L"}[name]
        return f"{prefix}{n}{self.tag}"

    # -- Loopline side --
    def ll_update(self, rec: Rec, data: dict[str, Any]) -> float:
        from loopline.prospects import services as prospects
        from loopline.prospects.models import Prospect

        prospect = Prospect.objects.get(pk=rec.prospect_id)
        prospects.update_prospect(prospect, data, actor=self.user, source="user")
        return time.time()

    # -- operations (each returns True if it did something) --
    def op_crm_field(self, rec: Rec) -> None:
        name = self.rng_choice(EDITABLE)
        value = self.value_for(name)
        self.api.update(rec.obj, rec.crm_id, {FIELDS[name][rec.obj == "Contact"]: value})
        rec.edits.append(Edit(time.time(), "crm", name, value))

    def op_ll_field(self, rec: Rec) -> None:
        name = self.rng_choice(EDITABLE)
        value = self.value_for(name)
        rec.edits.append(Edit(self.ll_update(rec, {name: value}), "ll", name, value))

    def op_crm_email(self, rec: Rec) -> None:
        value = self.value_for("email")
        self.api.update(rec.obj, rec.crm_id, {"Email": value})
        rec.edits.append(Edit(time.time(), "crm", "email", value))

    def op_ll_email(self, rec: Rec) -> None:
        value = self.value_for("email")
        rec.edits.append(Edit(self.ll_update(rec, {"email": value}), "ll", "email", value))

    def op_crm_owner(self, rec: Rec) -> None:
        owner = self.rng_choice(self.owners)
        self.api.update(rec.obj, rec.crm_id, {"OwnerId": owner})
        rec.owner = owner
        rec.edits.append(Edit(time.time(), "crm", "owner", owner))

    def op_crm_optout(self, rec: Rec) -> None:
        value = self.rng_choice((True, False))
        self.api.update(rec.obj, rec.crm_id, {"HasOptedOutOfEmail": value})
        rec.edits.append(Edit(time.time(), "crm", "opted_out", value))

    def op_ll_optout(self, rec: Rec) -> None:
        value = self.rng_choice((True, False))
        rec.edits.append(Edit(self.ll_update(rec, {"opted_out": value}), "ll", "opted_out", value))

    def op_crm_delete(self, rec: Rec) -> None:
        try:
            self.api.call("DELETE", f"sobjects/{rec.obj}/{rec.crm_id}")
        except CrmError as e:  # a retry after a lost answer: already deleted
            if e.status != 404 and e.code != "ENTITY_IS_DELETED":
                raise
        rec.state = "deleted"
        rec.identity_at.append(time.time())

    def op_crm_undelete(self, rec: Rec) -> None:
        result = self.api.admin("undelete", {"ids": [rec.crm_id]})
        if not result[0]["success"]:
            raise RuntimeError(f"undelete {rec.crm_id}: {result}")
        rec.state = "alive"
        rec.identity_at.append(time.time())

    def op_crm_merge(self, rec: Rec) -> None:
        other = self.pick(obj=rec.obj, shared=True)
        if other is None:
            return
        try:
            self.api.admin("merge", {"object": rec.obj, "masterId": rec.crm_id, "mergeIds": [other.crm_id]})
            now = time.time()
            other.state, other.merged_into = "merged", rec.key
            other.identity_at.append(now)
            rec.identity_at.append(now)
        finally:
            other.lock.release()

    def op_crm_convert(self, rec: Rec) -> None:
        result = self.api.admin("convert-lead", {"leadId": rec.crm_id})
        rec.lead_id, rec.obj, rec.crm_id = rec.crm_id, "Contact", result["contactId"]
        rec.identity_at.append(time.time())

    def op_crm_create(self) -> None:
        n = self.next_seq()
        email, last = f"crmnew{n}.{self.tag}@chaos.test", f"CrmNew{n}x{self.tag}"
        shared = self.rng_choice(range(5)) != 0  # [R35] a new lead the rule does not share never becomes a prospect
        region = RULE_VALUE if shared else self.rng_choice(OTHER_VALUES)
        self.api.create_once("Lead", {"LastName": last, "Company": "Chaos", "Email": email,
                                      RULE_FIELD: region or None}, email)
        self.created.append(Created("crm" if shared else "crm_hidden", email, last))

    def op_ll_create(self) -> None:
        from loopline.prospects import services as prospects

        n = self.next_seq()
        email, last = f"llnew{n}.{self.tag}@chaos.test", f"LlNew{n}x{self.tag}"
        p = prospects.create_prospect(self.bu, {"email": email, "last_name": last, "company": "Chaos"},
                                      actor=self.user)
        prospects.assign_prospect(p, self.user, actor=self.user)
        self.created.append(Created("ll", email, last, prospect_id=p.pk))

    def op_ll_reject(self, rec: Rec) -> None:
        """A value the CRM rejects: too long for the CRM field ([R20], caught before sending) or breaking the Lead
        validation rule ([R26], rejected by the CRM). The record leaves the pool: it waits in the error queue."""
        if rec.obj == "Lead" and self.rng_choice((True, False)):
            data = {"website": f"www.bad{self.next_seq()}.example"}
        else:
            data = {"first_name": "X" * 60}
        before = self.api.call("GET", f"sobjects/{rec.obj}/{rec.crm_id}")
        name = next(iter(data))
        crm_field = "Website" if name == "website" else FIELDS[name][rec.obj == "Contact"]
        rec.reject = {"field": name, "value": data[name], "crm_field": crm_field, "crm_before": before.get(crm_field)}
        rec.state = "rejected"
        rec.reject["t"] = self.ll_update(rec, data)

    def op_mds_flip(self, rec: Rec) -> None:
        """The CRM user sets the rule field of a linked record to another value (it leaves the BU: its prospect goes
        to the recycle bin, [R36]) or back to the rule's value (it comes back, restored)."""
        value = self.rng_choice(OTHER_VALUES) if rec.shared else RULE_VALUE
        self.api.update(rec.obj, rec.crm_id, {RULE_FIELD: value or None})
        rec.shared = not rec.shared
        rec.flips.append((time.time(), rec.shared))

    def rng_choice(self, seq):
        with self.rng_lock:
            return self.rng.choice(seq)

    def run_op(self, name: str) -> None:
        for _ in range(10):  # no record fits this operation right now (none deleted yet, all locked): another one
            if self.try_op(name):
                return
            name = self.choose()
        self.failures["no_record"] += 1

    def try_op(self, name: str) -> bool:
        try:
            if name == "crm_create":
                self.op_crm_create()
            elif name == "ll_create":
                self.op_ll_create()
            else:
                states = ("deleted",) if name == "crm_undelete" else ("alive",)
                obj = "Lead" if name in ("crm_convert", "crm_merge") else None
                shared: bool | None = True
                if name == "mds_flip":  # as many flips back as out, while there are hidden records
                    shared = self.rng_choice((True, False))
                elif name in HIDDEN_OK:
                    shared = None
                rec = self.pick(obj=obj, states=states, shared=shared)
                if rec is None and name == "mds_flip":
                    rec = self.pick(states=states, shared=None)
                if rec is None:
                    return False
                try:
                    getattr(self, f"op_{name}")(rec)
                finally:
                    rec.lock.release()
            self.counts[name] += 1
        except Exception as e:  # counted and reported; the run goes on
            self.failures[f"{name}: {type(e).__name__}"] += 1
            log(f"operation {name} failed: {e}")
        finally:
            self.last_edit_at = max(self.last_edit_at, time.time())
        return True

    # -- the worker subprocess and the faults --
    def start_worker(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with open(self.worker_log, "ab") as out:  # the child keeps its own handle
            self.proc = subprocess.Popen([sys.executable, "-m", "loopline", "connector", "worker", "--connector",
                                          str(self.connector.pk)], env=env, stdout=out, stderr=subprocess.STDOUT)

    def kill_worker(self) -> None:
        from django.utils import timezone

        from loopline.connector.models import OutboxEntry

        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        started = time.time()
        # The dead worker's leases run out (5 minutes); fast-forwarded so the bench does not sit idle.
        OutboxEntry.objects.filter(connector=self.connector, status=OutboxEntry.Status.PENDING,
                                   locked_until__isnull=False).update(locked_until=timezone.now())
        time.sleep(self.rng_choice((0.5, 1.0, 2.0)))
        self.start_worker()
        self.blackouts.append((started, time.time() + 3))  # + start-up time of the new process
        self.kills_done += 1
        log(f"worker killed with SIGKILL and restarted ({self.kills_done})")

    def stop_worker(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def limit_window(self) -> None:
        """Every API call answers 403 REQUEST_LIMIT_EXCEEDED for a few seconds. The connector pauses itself until
        the window rolls ([R27], at least 15 minutes); the bench fast-forwards that wait once the window closed
        (clears ``paused_until`` and restarts the worker with SIGTERM: its in-memory back-off is part of the wait)."""
        from loopline.connector.models import Connector

        started = time.time()
        paused = Connector.objects.filter(pk=self.connector.pk, paused_until__isnull=False)
        self.crm.faults(error_rates={"REQUEST_LIMIT_EXCEEDED": 1.0}, merge=True)
        # At least ``limit_window_s``, and until the connector has met it (it may be backing off from a fault).
        while time.time() - started < self.limit_window_s or (not self.limit_paused and
                                                              time.time() - started < 3 * self.limit_window_s):
            self.limit_paused = self.limit_paused or paused.exists()
            time.sleep(0.25)
        self.crm.faults(error_rates=fault_mix(self.fault_rate), merge=True)
        time.sleep(1.0)  # a call answered inside the window may still be on its way to pausing the connector
        self.limit_paused = bool(paused.update(paused_until=None)) or self.limit_paused
        # The worker also waits 60 s in memory after a limit error: fast-forwarded too, by a graceful restart.
        self.stop_worker()
        self.fast_forward_limit_wait()
        self.start_worker()
        self.blackouts.append((started, time.time() + 3))
        self.limit_seconds = round(time.time() - started - 1.0, 1)
        log(f"REQUEST_LIMIT_EXCEEDED window of {self.limit_seconds:g} s (connector paused: {self.limit_paused})")

    def fast_forward_limit_wait(self) -> None:
        """Outbox entries a push met the limit window with wait for it to roll ([R27], rescheduled to the end of the
        pause, 15 minutes or more away): fast-forwarded like the pause itself (else they sit out the settle time)."""
        from django.utils import timezone

        from loopline.connector.models import OutboxEntry

        now = timezone.now()
        moved = OutboxEntry.objects.filter(connector=self.connector, status=OutboxEntry.Status.PENDING,
                                           next_run_at__gt=now + timedelta(minutes=4)).update(next_run_at=now)
        if moved:
            log(f"{moved} outbox entries waiting for the limit window to roll: fast-forwarded")

    # -- the run --
    def run(self) -> dict[str, Any]:
        self.crm.faults(error_rates=fault_mix(self.fault_rate), seed=11, merge=True)
        self.start_worker()
        n = self.n_edits
        kill_at = sorted(self.rng.sample(range(max(1, n // 10), max(2, n - n // 10)), min(self.kills, max(0, n - 2))))
        limit_at = max(1, n // 10)
        started = self.started_at = time.time()
        done = 0
        try:
            with ThreadPoolExecutor(self.threads) as pool:
                chunk = 20
                while done < n:
                    size = min(chunk, n - done)
                    list(pool.map(self.run_op, [self.choose() for _ in range(size)]))
                    before, done = done, done + size
                    if before < limit_at <= done:
                        self.limit_window()
                    for k in kill_at:
                        if before < k <= done:
                            self.kill_worker()
                    if done % 500 == 0 or done == n:
                        log(f"{done}/{n} operations")
                pool.submit(_close_db).result()
            edit_seconds = time.time() - started
            self.crm.faults(error_rates={}, merge=True)
            log("faults off; waiting for quiescence")
            check, converge_s, settled = self.settle()
            if check.get("mismatches"):
                with contextlib.suppress(Exception):
                    debug = Path(tempfile.gettempdir()) / f"loopline-chaos-{self.tag}.json"
                    self.dump(debug)
                    check["debug_file"] = str(debug)
        finally:
            self.stop_worker()
            with contextlib.suppress(Exception):
                self.crm.faults(reset=True)
            if not self.worker_died:
                self.worker_log.unlink(missing_ok=True)
        extra = {"worker_died": self.worker_died} if self.worker_died else {}
        return {**extra, "edits": sum(self.counts.values()), "operations": dict(sorted(self.counts.items())),
                "failed_operations": dict(self.failures), "edit_seconds": round(edit_seconds, 1),
                "seconds": round(time.time() - started, 1), "settled": settled, "converge_s": converge_s, **check}

    def settle(self) -> tuple[dict[str, Any], float | None, bool]:
        """Until both sides agree with the ledger, or nothing changes any more (outbox empty, the same check result
        twice a poll interval apart, no new pull): converge_s counts from the last edit."""
        from loopline.connector.models import Connector, OutboxEntry

        deadline = time.time() + self.settle_timeout
        previous = None
        check: dict[str, Any] = {}
        while True:
            if self.proc is not None and self.proc.poll() is not None and not self.worker_died:
                self.worker_died = f"exit {self.proc.returncode}: " + self.worker_log.read_text()[-1500:]
                log(f"the worker exited by itself ({self.worker_died})")
            if Connector.objects.filter(pk=self.connector.pk, paused_until__isnull=False).update(paused_until=None):
                self.fast_forward_limit_wait()
            pending = OutboxEntry.objects.filter(connector=self.connector, status=OutboxEntry.Status.PENDING).count()
            if pending == 0:
                check = self.check()
                digest = json.dumps({k: v for k, v in check.items() if k != "examples"}, sort_keys=True)
                if check["mismatches"] == 0 and check["lost"] == 0 and check["duplicates"] == 0:
                    return check, round(time.time() - self.last_edit_at, 1), True
                if digest == previous and time.time() - self.last_edit_at > 2 * AMBIGUOUS_S:
                    return check, None, True  # stable, but not what the rules say: reported as mismatches
                previous = digest
            if time.time() > deadline:
                return (check or self.check()), None, False
            time.sleep(5)

    def dump(self, path: Path) -> None:
        """Evidence for the records the last check found wrong: their ledger, the prospect's per-field change times,
        outbox rows, link state, sync timeline and the CRM's field history — written to ``path`` (JSON)."""
        from loopline.connector.models import CrmLink, OutboxEntry
        from loopline.prospects.models import Activity, Prospect

        t0 = self.started_at
        records: list[dict[str, Any]] = []
        out = {"started_at": t0, "blackouts": [(round(a - t0, 1), round(b - t0, 1)) for a, b in self.blackouts],
               "records": records}
        for key, rec in list(self.last_suspects.items())[:15]:
            p = Prospect.objects.get(pk=rec.prospect_id)
            hist = self.api.query(f"SELECT Field, OldValue, NewValue, CreatedDate, CreatedById FROM {rec.obj}History "
                                  f"WHERE {rec.obj}Id = '{rec.crm_id}'")
            records.append({
                "key": key, "ledger": [(round(e.t - t0, 2), e.side, e.field, e.value) for e in rec.edits],
                "identity": [round(t - t0, 2) for t in rec.identity_at],
                "mds_flips": [(round(t - t0, 2), "in" if shared else "out") for t, shared in rec.flips],
                "field_changed_at": p.field_changed_at,
                "outbox": list(OutboxEntry.objects.filter(prospect_id=p.pk).order_by("id").values(
                    "id", "status", "reason", "changed_fields", "attempts", "created_at", "done_at")),
                "links": list(CrmLink.objects.filter(prospect_id=p.pk).values(
                    "crm_object", "crm_id", "last_crm_modstamp", "last_synced_at", "baseline")),
                "timeline": list(Activity.objects.filter(prospect_id=p.pk).order_by("id").values(
                    "occurred_at", "title")),
                "crm_history": hist,
            })
        path.write_text(json.dumps(out, indent=1, default=str))

    # -- the checker --
    def crm_rows(self, obj: str, ids: list[str]) -> dict[str, dict]:
        fields = ["Id", "IsDeleted", "OwnerId", "MasterRecordId", RULE_FIELD,
                  *sorted({f[obj == "Contact"] for f in FIELDS.values()})]
        if obj == "Lead":
            fields += ["IsConverted", "ConvertedContactId", "Website"]
        out: dict[str, dict] = {}
        for i in range(0, len(ids), 150):
            part = ",".join(f"'{x}'" for x in ids[i:i + 150])
            for row in self.api.query(f"SELECT {', '.join(fields)} FROM {obj} WHERE Id IN ({part})", all_rows=True):
                out[row["Id"]] = row
        return out

    def history(self, rec: Rec, name: str) -> str:
        """The ledger of one field, for the report: side@seconds-since-start=value; identity changes as !."""
        t0 = self.started_at
        items = [(e.t, f"{e.side}@{e.t - t0:.1f}={e.value!r}") for e in rec.edits if e.field == name]
        items += [(t, f"!identity@{t - t0:.1f}") for t in rec.identity_at]
        items += [(t, f"~mds-{'in' if shared else 'out'}@{t - t0:.1f}") for t, shared in rec.flips]
        if rec.reject:
            items.append((rec.reject["t"], f"reject@{rec.reject['t'] - t0:.1f}"))
        return ", ".join(text for _, text in sorted(items)) + (f" (lead {rec.lead_id})" if rec.lead_id else "")

    def ambiguous(self, a: Edit, b: Edit, rec: Rec) -> bool:
        """Two edits of one field on different sides close enough that either may win."""
        lo, hi = sorted((a.t, b.t))
        window = AMBIGUOUS_S + sum(max(0.0, min(hi, e) - max(lo, s)) for s, e in self.blackouts)
        return hi - lo < window

    def expected(self, rec: Rec, name: str) -> tuple[set[Any] | None, Edit | None]:
        """The values the rules allow for ``name`` (None: only agreement required) and the edit that decides."""
        edits = [e for e in rec.edits if e.field == name]
        if not edits:
            return None, None
        last = edits[-1]
        for t in rec.identity_at:  # an identity change after the last edit, or before it within the sync window
            if t > last.t or self.ambiguous(Edit(t, "crm", name, None), last, rec):  # (blackouts widen it)
                return None, None
        for t, _ in rec.flips:  # [R36] an MDS flip close to the edit: the poll may have seen either order
            if self.ambiguous(Edit(t, "crm", name, None), last, rec):
                return None, None
        if self.held_edit(rec, name) is not None:
            # [R36] a Loopline edit made while the record was hidden (prospect in the recycle bin) is not written to
            # the CRM then; once the record matches again it is resolved against the last agreed value like any
            # change made while the two sides were apart (docs/connector.md): pushed, unless the CRM changed the
            # same field since the record left — then both changed, and either may win [R16], but the sides agree.
            out_t = max(t for t, shared in rec.flips if not shared and t <= last.t)
            left = Edit(out_t, "crm", name, None)  # a CRM edit just before it may not have been pulled before it
            crm_since = [e for e in edits if e.side == "crm" and e.t < last.t and (e.t >= out_t or
                                                                                   self.ambiguous(e, left, rec))]
            if crm_since:
                return {norm(name, last.value), norm(name, crm_since[-1].value)}, None
            return {norm(name, last.value)}, last
        other = next((e for e in reversed(edits) if e.side != last.side), None)
        if other is not None and self.ambiguous(other, last, rec):
            return {norm(name, last.value), norm(name, other.value)}, None
        return {norm(name, last.value)}, last

    def held_edit(self, rec: Rec, name: str) -> Edit | None:
        """The last edit of ``name`` if it is a Loopline edit made while the record was hidden."""
        edits = [e for e in rec.edits if e.field == name]
        if not edits or edits[-1].side != "ll" or self.shared_at(rec, edits[-1].t):
            return None
        return edits[-1]

    @staticmethod
    def shared_at(rec: Rec, t: float) -> bool:
        """Whether the CRM record matched the rule at time ``t`` (by the ledger of MDS flips)."""
        shared = True
        for at, after in rec.flips:
            if at > t:
                break
            shared = after
        return shared

    def check(self) -> dict[str, Any]:
        from django.db import close_old_connections
        from django.db.models import Count, Q

        from loopline.connector import sharing
        from loopline.connector.models import Connector, CrmLink, SyncError
        from loopline.prospects.models import Prospect

        close_old_connections()
        examples: list[str] = []
        mismatched: set[str] = set()
        lost = 0

        suspects: dict[str, Rec] = {}

        def bad(key: str, why: str, rec: Rec | None = None) -> None:
            if rec is not None:
                suspects[key] = rec
            mismatched.add(key)
            if len(examples) < 25:
                examples.append(f"{key}: {why}")

        prospects = {p.pk: p for p in Prospect.objects.filter(bu=self.bu)}
        rows: dict[str, dict] = {}
        for obj in ("Lead", "Contact"):
            ids = [r.crm_id for r in self.recs if r.obj == obj] + [r.lead_id for r in self.recs if r.lead_id and
                                                                    obj == "Lead"]
            rows.update(self.crm_rows(obj, ids))
        open_errors = defaultdict(list)
        for e in SyncError.objects.filter(connector=self.connector, status=SyncError.Status.OPEN):
            open_errors[e.prospect_id].append(e)
        flipped = [r for r in self.recs if r.flips]
        hidden_now = sharing.hidden_prospect_ids(self.bu.pk, [r.prospect_id for r in flipped])
        # Every prospect (recycled ones too) per CRM id of a flipped record: one, never re-created ([R36]).
        per_crm_id: Counter[str] = Counter()
        ids = [r.crm_id for r in flipped]
        for lead_id, contact_id in Prospect.objects.filter(Q(crm_lead_id__in=ids) | Q(crm_contact_id__in=ids),
                                                           bu=self.bu).values_list("crm_lead_id", "crm_contact_id"):
            for crm_id in {lead_id, contact_id} - {""}:
                per_crm_id[crm_id] += 1
        recreated = 0
        held: Counter[str] = Counter()  # outcome of Loopline edits made while the record was hidden (for the report)

        for rec in self.recs:
            key = f"{rec.obj} {rec.crm_id} / prospect {rec.prospect_id}"
            p = prospects.get(rec.prospect_id)
            row = rows.get(rec.crm_id)
            if p is None or row is None:
                bad(key, "prospect or CRM record missing")
                continue
            if rec.state == "deleted":  # [R31]
                if not (p.is_deleted and p.crm_deleted):
                    bad(key, f"deleted in the CRM: expected recycled + crm_deleted, got is_deleted={p.is_deleted} "
                             f"crm_deleted={p.crm_deleted}")
                continue
            if rec.state == "merged":  # [R32]
                winner = self.recs[rec.merged_into] if rec.merged_into is not None else None
                if not p.is_deleted or (winner and p.merged_into_id not in (winner.prospect_id, None)):
                    bad(key, f"merged loser: expected recycled, got is_deleted={p.is_deleted} "
                             f"merged_into={p.merged_into_id}")
                continue
            if rec.state == "rejected":  # [R20] [R26]
                reason = [e for e in open_errors.get(p.pk, []) if e.code]
                name = rec.reject["field"]
                crm_edit = next((e for e in reversed(rec.edits) if e.field == name and e.side == "crm"), None)
                rejected_at = Edit(rec.reject["t"], "ll", name, None)
                near = [Edit(t, "crm", name, None) for t in [*rec.identity_at, *(t for t, _ in rec.flips)]] + (
                    [crm_edit] if crm_edit else [])
                if (norm(name, getattr(p, name)) != norm(name, rec.reject["value"])
                        and any(self.ambiguous(e, rejected_at, rec) for e in near)):
                    # A CRM edit of the same field (or the record's identity change) pulled after the rejected write:
                    # the CRM's value won the conflict ([R16], use the CRM's value); both sides must agree.
                    if norm(name, getattr(p, name)) != norm(name, row.get(rec.reject["crm_field"])):
                        bad(key, f"rejected {name} replaced by the CRM's value, but the sides disagree")
                    continue
                if norm(name, getattr(p, name)) != norm(name, rec.reject["value"]):
                    bad(key, f"rejected {name}: Loopline now has {getattr(p, name)!r} — {self.history(rec, name)}")
                if not reason:
                    bad(key, f"rejected {name}: no open sync error with a reason — {self.history(rec, name)}")
                if norm("x", row.get(rec.reject["crm_field"])) == norm("x", rec.reject["value"]):
                    bad(key, f"rejected value reached the CRM ({rec.reject['crm_field']})")
                continue
            if rec.flips and per_crm_id[rec.crm_id] != 1:
                recreated += max(0, per_crm_id[rec.crm_id] - 1)
                bad(key, f"{per_crm_id[rec.crm_id]} prospects linked to the flipped record — {self.history(rec, '')}")
            if not rec.shared:  # [R36] the record left the BU: its prospect waits in the recycle bin, not CRM-deleted
                linked = p.crm_contact_id if rec.obj == "Contact" else p.crm_lead_id
                if row.get(RULE_FIELD) == RULE_VALUE:
                    bad(key, f"CRM {RULE_FIELD} is {row.get(RULE_FIELD)!r}, the scenario set it to another value")
                if not p.is_deleted or p.crm_deleted or p.merged_into_id is not None or linked != rec.crm_id:
                    bad(key, f"not shared: expected recycled, linked, not CRM-deleted; got is_deleted={p.is_deleted} "
                             f"crm_deleted={p.crm_deleted} merged_into={p.merged_into_id} linked to {linked!r} — "
                             f"{self.history(rec, '')}", rec)
                elif p.pk not in hidden_now:
                    bad(key, "not shared and recycled, but the timeline's last MDS event is not crm_not_shared", rec)
                continue
            if rec.flips and p.pk in hidden_now:
                bad(key, "shared again, but the timeline's last MDS event is crm_not_shared", rec)
            # alive
            if p.is_deleted or p.crm_deleted:
                bad(key, f"live in the CRM but prospect is_deleted={p.is_deleted} crm_deleted={p.crm_deleted}")
            linked = p.crm_contact_id if rec.obj == "Contact" else p.crm_lead_id
            if linked != rec.crm_id:  # [R13] a converted lead's prospect follows the contact
                bad(key, f"prospect linked to {linked or 'nothing'}")
            if rec.lead_id:
                lead = rows.get(rec.lead_id) or {}
                if not lead.get("IsConverted") or lead.get("ConvertedContactId") != rec.crm_id:
                    bad(key, f"converted lead {rec.lead_id} not converted to {rec.crm_id}")
            for name, (lead_f, contact_f) in FIELDS.items():
                crm_value = norm(name, row.get(contact_f if rec.obj == "Contact" else lead_f))
                ll_value = norm(name, getattr(p, name))
                allowed, decider = self.expected(rec, name)
                if (h := self.held_edit(rec, name)) is not None:
                    held["pushed" if crm_value == ll_value == norm(name, h.value) else
                         "crm_value_kept" if crm_value == ll_value else "disagree"] += 1
                if crm_value != ll_value:
                    bad(key, f"{name}: CRM {crm_value!r} ≠ Loopline {ll_value!r} — {self.history(rec, name)}", rec)
                if allowed is not None and (crm_value not in allowed or ll_value not in allowed):
                    bad(key, f"{name}: expected {sorted(map(str, allowed))}, CRM {crm_value!r}, Loopline {ll_value!r}"
                             f" — {self.history(rec, name)}", rec)
                    if decider is not None:
                        origin = crm_value if decider.side == "crm" else ll_value
                        target = ll_value if decider.side == "crm" else crm_value
                        if origin == norm(name, decider.value) and target != origin:
                            lost += 1  # the edit is there on its own side and never reached the other
            if (p.crm_owner_id or "") != row.get("OwnerId"):  # [R18] owner flows CRM → Loopline
                bad(key, f"owner: CRM {row.get('OwnerId')} ≠ Loopline {p.crm_owner_id!r}")

        # New records on both sides ([R10], [R11], [R25]).
        emails = [c.email for c in self.created]
        crm_by_email: dict[str, list[dict]] = defaultdict(list)
        for i in range(0, len(emails), 100):
            part = ",".join(f"'{e}'" for e in emails[i:i + 100])
            for obj in ("Lead", "Contact"):
                for r in self.api.query(f"SELECT Id, Email FROM {obj} WHERE Email IN ({part})"):
                    crm_by_email[r["Email"].lower()].append(r)
        ll_by_email: dict[str, list[Prospect]] = defaultdict(list)
        any_by_email: dict[str, int] = Counter()
        for p in prospects.values():
            if p.email:
                any_by_email[p.email] += 1
            if p.email and not p.is_deleted:
                ll_by_email[p.email].append(p)
        duplicates = recreated
        for c in self.created:
            crm_recs, ll_recs = crm_by_email.get(c.email, []), ll_by_email.get(c.email, [])
            if c.side == "crm_hidden":  # [R35] not shared with the BU: never a prospect
                if len(crm_recs) != 1 or any_by_email[c.email]:
                    bad(f"new unshared CRM lead {c.email}", f"{len(crm_recs)} CRM records, "
                                                            f"{any_by_email[c.email]} prospects (expected 1 and 0)")
                continue
            if not crm_recs or not ll_recs:
                lost += 1
                bad(f"new {c.side} {c.email}", f"{len(crm_recs)} CRM records, {len(ll_recs)} prospects")
                continue
            if len(crm_recs) > 1 or len(ll_recs) > 1:
                duplicates += len(crm_recs) - 1 + len(ll_recs) - 1
                bad(f"new {c.side} {c.email}", f"{len(crm_recs)} CRM records, {len(ll_recs)} prospects")
            elif ll_recs[0].crm_id != crm_recs[0]["Id"]:
                bad(f"new {c.side} {c.email}", f"prospect linked to {ll_recs[0].crm_id!r}, CRM {crm_recs[0]['Id']}")

        # Duplicates anywhere: >1 live prospect per CRM id, >1 link per prospect and object.
        for column in ("crm_lead_id", "crm_contact_id"):
            duplicates += sum(r["n"] - 1 for r in Prospect.objects.filter(bu=self.bu, is_deleted=False)
                              .exclude(**{column: ""}).values(column).annotate(n=Count("id")).filter(n__gt=1))
        duplicates += sum(r["n"] - 1 for r in CrmLink.objects.filter(connector=self.connector)
                          .values("prospect_id", "crm_object").annotate(n=Count("id")).filter(n__gt=1))
        # [R35] seeded records the rule never shared: no prospect, no link.
        by_obj: dict[str, list[str]] = defaultdict(list)
        for obj, crm_id in self.unshared_seed:
            by_obj[obj].append(crm_id)
        leaked = Prospect.objects.filter(Q(crm_lead_id__in=by_obj["Lead"]) | Q(crm_contact_id__in=by_obj["Contact"]),
                                         bu=self.bu).count()
        leaked += CrmLink.objects.filter(connector=self.connector,
                                         crm_id__in=by_obj["Lead"] + by_obj["Contact"]).count()
        if leaked:
            bad("unshared seed", f"{leaked} prospects/links for CRM records the sharing rule never shared")
        self.last_suspects = suspects
        errors = SyncError.objects.filter(connector=self.connector, status=SyncError.Status.OPEN)
        state = Connector.objects.values("status", "last_error", "paused_until").get(pk=self.connector.pk)
        return {"records": len(self.recs), "created": len(self.created),
                "connector": {k: str(v) for k, v in state.items() if v},
                "rejected": sum(1 for r in self.recs if r.state == "rejected"),
                "mds": {"flipped": len(flipped), "hidden_at_end": sum(1 for r in self.recs if not r.shared),
                        "unshared_seed": len(self.unshared_seed),
                        "unshared_created": sum(1 for c in self.created if c.side == "crm_hidden"),
                        "edits_while_hidden": sum(1 for r in self.recs for e in r.edits
                                                  if r.flips and not self.shared_at(r, e.t)),
                        "held_ll_edits": dict(held)},
                "errors_by_code": dict(Counter(errors.values_list("code", flat=True))),
                "examples": examples, "mismatches": len(mismatched), "duplicates": duplicates, "lost": lost,
                "errors_in_queue": errors.count()}


def _close_db() -> None:
    from django.db import connection

    connection.close()


# --- setup -----------------------------------------------------------------------------------------------------------


def seed_rule_values(crm, *, seed: int) -> list[tuple[str, str]]:
    """Set the sharing rule's field on the seeded leads and contacts: most get the rule's value, the rest another
    value or none ([R35]). Returns (object, id) of the records the BU must never see."""
    api = CrmUser(crm)
    rng = random.Random(seed)
    unshared: list[tuple[str, str]] = []
    for obj in ("Lead", "Contact"):
        where = " WHERE IsConverted = false" if obj == "Lead" else ""
        ids = [r["Id"] for r in api.query(f"SELECT Id FROM {obj}{where}")]
        records = []
        for rid in ids:
            value = RULE_VALUE
            if rng.random() < UNSHARED_SEED_SHARE:
                value = rng.choice(OTHER_VALUES)
                unshared.append((obj, rid))
            if value:
                records.append({"attributes": {"type": obj}, "id": rid, RULE_FIELD: value})
        for i in range(0, len(records), 200):
            results = api.call("PATCH", "composite/sobjects", json={"allOrNone": True, "records": records[i:i + 200]})
            assert all(r.get("success") for r in results), results
    log(f"sharing rule {RULE_FIELD} = {RULE_VALUE!r}; {len(unshared)} seeded records not shared")
    return unshared


def setup_connector(crm, *, latency_ms: float, seed: int = 7):
    """A BU, an admin, the connector verified against ``crm``, marketing data sharing rules set (most seeded records
    match), the initial import run, the connector resumed. Returns the seeded records the rule does not share too."""
    from loopline.connector import services, sharing
    from loopline.connector.sync import pull

    bu, access, connector = connected_bu(crm, "Chaos")
    user = access.user
    # [R35] lead and contact rules on an unmapped field, set while the connector is paused ([R37]).
    rule = {"field": RULE_FIELD, "value": RULE_VALUE}
    sharing.set_sharing_rules(connector, {"Lead": rule, "Contact": rule}, access)
    unshared = seed_rule_values(crm, seed=seed)
    if latency_ms:
        crm.faults(latency_ms=latency_ms, jitter_ms=latency_ms / 5, seed=3)
    log("initial import")
    pull.initial_import(connector)
    services.resume(access, connector)
    connector.refresh_from_db()
    return bu, user, connector, unshared


def run_chaos(crm, *, edits: int, fault_rate: float, kills: int, latency_ms: float, seed: int = 7,
              threads: int = 4, settle_timeout: float = SETTLE_TIMEOUT_S, after=None) -> dict[str, Any]:
    """The whole scenario; ``after(bu, user, connector)`` runs once it is checked (more rounds on the same set-up)."""
    bu, user, connector, unshared = setup_connector(crm, latency_ms=latency_ms, seed=seed)
    scenario = Scenario(crm=crm, connector=connector, bu=bu, user=user, edits=edits, fault_rate=fault_rate,
                        kills=kills, seed=seed, threads=threads, settle_timeout=settle_timeout)
    scenario.unshared_seed = unshared
    scenario.load_pool()
    result = scenario.run()
    result["kills"] = scenario.kills_done
    result["limit_window"] = {"seconds": scenario.limit_seconds, "paused_connector": scenario.limit_paused}
    if after is not None:
        result.update(after(bu, user, connector))
    return result

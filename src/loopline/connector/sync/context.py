"""What one unit of sync work needs: the connector, a CRM client, the engine's mapping and settings, describes."""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from django.utils import timezone

from .. import services
from ..engine import ConnectorSettings, CrmRecord, ObjectDescribe
from ..engine.model import CrmObject, FieldMapping, sobject_name
from ..mapping import load_mappings
from ..models import Connector, CrmDescribe
from ..salesforce.client import CrmClient
from .snapshots import crm_side

DESCRIBE_MAX_AGE = dt.timedelta(hours=24)
POLLED_OBJECTS = ("Lead", "Contact")

_clients: dict[int, tuple[str, CrmClient]] = {}
_clients_lock = threading.Lock()


def _client_key(connector: Connector) -> str:
    parts = (connector.login_url, connector.consumer_key, connector.username, connector.api_version,
             connector.ca_file, connector.private_key)
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def shared_client(connector: Connector) -> CrmClient:
    """One client (and access token) per connector and process; rebuilt when the connection settings change.
    Tokens are re-minted on INVALID_SESSION_ID by the client itself ([R6])."""
    key = _client_key(connector)
    with _clients_lock:
        cached = _clients.get(connector.pk)
        if cached is not None and cached[0] == key:
            return cached[1]
        client = services.client_for(connector)
        _clients[connector.pk] = (key, client)
        return client


def forget_client(connector_id: int) -> None:
    with _clients_lock:
        cached = _clients.pop(connector_id, None)
    if cached is not None:
        cached[1].close()


@dataclass
class SyncContext:
    connector: Connector
    client: CrmClient
    mappings: tuple[FieldMapping, ...]
    settings: ConnectorSettings
    raw_settings: dict[str, Any]
    calls_at_start: int = 0
    _describes: dict[str, ObjectDescribe] = field(default_factory=dict)
    _derived: dict[tuple[str, dt.datetime], tuple[dict[str, Any], str, dict[str, str]]] = field(default_factory=dict)
    _person_accounts: bool | None = None

    @classmethod
    def load(cls, connector: Connector, client: CrmClient | None = None) -> SyncContext:
        raw = services.settings_of(connector)
        client = client or shared_client(connector)
        ctx = cls(
            connector=connector,
            client=client,
            mappings=load_mappings(connector),
            settings=ConnectorSettings.from_dict(
                {**raw, "matching_mode": "crm_id" if connector.bu.allow_duplicate_emails else "unique_email"},
                connector_user_id=connector.connector_user_id,
            ),
            raw_settings=raw,
            calls_at_start=client.usage.calls,
        )
        ctx.mappings = ctx.effective_mappings(ctx.mappings)
        return ctx

    def effective_mappings(self, mappings: tuple[FieldMapping, ...]) -> tuple[FieldMapping, ...]:
        """The mapping without CRM fields the org does not have (per the describe): a mapped field missing on one
        object must not break the whole poll. Parent paths (``Account.Name``) are kept."""
        known: dict[str, set[str]] = {}
        for object_type in self.polled_objects:  # a person account's fields per the Account describe
            try:
                known[object_type] = {name.lower() for name in self.describe(object_type).fields}
            except Exception:
                return mappings
        out = []
        for m in mappings:
            by_object = {
                obj: name for obj, name in m.crm_field_by_object.items()
                if obj not in known or "." in name or name.lower() in known[obj]
            }
            out.append(m if len(by_object) == len(m.crm_field_by_object) else replace(m, crm_field_by_object=by_object))
        return tuple(out)

    def crm_side(self, record: CrmRecord) -> tuple[dict[str, Any], str, dict[str, str]]:
        """``snapshots.crm_side`` of the record: new-prospect values, record hash, agreed baseline (precomputed by
        the page thread when it could)."""
        done = self._derived.pop((record.id, record.system_modstamp), None)
        return done if done is not None else crm_side(record.values, self.mappings, record.object_type)

    def precompute(self, records: Iterable[CrmRecord]) -> None:
        """Work out ``crm_side`` ahead (pure: safe in the page-fetching thread)."""
        for r in records:
            self._derived[(r.id, r.system_modstamp)] = crm_side(r.values, self.mappings, r.object_type)

    def forget_precomputed(self, records: Iterable[CrmRecord]) -> None:
        for r in records:
            self._derived.pop((r.id, r.system_modstamp), None)

    @property
    def person_accounts(self) -> bool:
        """Whether person accounts sync ([R14]): the BU turned them on (or creates them) and the org has them —
        ``Contact.IsPersonAccount`` exists only then (the contact describe is read anyway: no extra call)."""
        if self._person_accounts is None:
            raw = self.raw_settings
            if not (raw.get("sync_person_accounts") or raw.get("new_record_object") == CrmObject.PERSON_ACCOUNT):
                self._person_accounts = False
                return False
            try:
                self._person_accounts = self.describe("Contact").get("IsPersonAccount") is not None
            except Exception:  # describe unavailable: sync leads and contacts as before
                return False
        return self._person_accounts

    @property
    def polled_objects(self) -> tuple[str, ...]:
        """Leads and contacts, and person accounts when the org has them ([R8], [R14])."""
        return (*POLLED_OBJECTS, CrmObject.PERSON_ACCOUNT.value) if self.person_accounts else POLLED_OBJECTS

    def soql_filter(self, object_type: str) -> tuple[str, ...]:
        """Extra SOQL conditions per object: with person accounts, a person contact is synced through its account
        (the account is the record to read and write), never as a contact of its own ([R14])."""
        return ("IsPersonAccount = false",) if object_type == CrmObject.CONTACT and self.person_accounts else ()

    @property
    def api_version(self) -> str:
        return self.connector.api_version

    @property
    def calls(self) -> int:
        """API calls made through this context so far."""
        return self.client.usage.calls - self.calls_at_start

    def describe(self, object_type: str) -> ObjectDescribe:
        """Describe metadata for value checks ([R20]), cached in ``CrmDescribe`` for a day."""
        name = sobject_name(object_type)
        if name in self._describes:
            return self._describes[name]
        row = CrmDescribe.objects.filter(connector=self.connector, object_type=name).first()
        if row is None or row.fetched_at < timezone.now() - DESCRIBE_MAX_AGE:
            data = self.client.describe(name)
            CrmDescribe.objects.update_or_create(connector=self.connector, object_type=name, defaults={"data": data})
        else:
            data = row.data
        described = ObjectDescribe.from_describe(data, object_type=name)
        self._describes[name] = described
        return described

"""Per-run counters ([R29]): what a sync run fetched, created, updated, skipped (with reasons) and failed. A run
that did nothing says why (:meth:`RunCounters.summary`); nothing fails silently."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .model import SkipReason

_REASON_TEXT: dict[str, str] = {
    SkipReason.ECHO: "the connector's own writes coming back",
    SkipReason.UNCHANGED: "no mapped field changed",
    SkipReason.ALREADY_SEEN: "already processed (poll overlap)",
    SkipReason.NO_EMAIL: "no email address",
    SkipReason.AUTO_CREATE_OFF: "'automatically create prospects' is off",
    SkipReason.UNASSIGNED: "unassigned prospects with no matching CRM record",
    SkipReason.DO_NOT_SYNC: "marked 'do not sync with CRM'",
    SkipReason.CRM_DELETED: "deleted in the CRM",
    SkipReason.IN_RECYCLE_BIN: "in the recycle bin",
    SkipReason.CONVERTED_LEAD: "converted leads",
    SkipReason.LOSES_TO_OTHER_RECORD: "the prospect syncs with another record",
    SkipReason.ALREADY_LINKED: "already linked",
    SkipReason.EMAIL_CHANGED_UNLINKED: "email changed in the CRM (unlinked)",
    SkipReason.NOT_VISIBLE: "outside the marketing data sharing rule",
    SkipReason.PAUSED: "the connector is paused",
    SkipReason.BUDGET: "the API budget is used up",
    SkipReason.INVALID: "values the CRM would reject",
}


@dataclass
class RunCounters:
    """Mutable tally for one run. ``as_dict``/``from_dict`` round-trip through the ``SyncRun.counters`` JSON."""

    fetched: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    failed_by_code: Counter[str] = field(default_factory=Counter)
    note: str = ""  # why the run had nothing to do (e.g. "no changes since 12:00:05"), set by the caller

    def skip(self, reason: SkipReason | str, n: int = 1) -> None:
        self.skipped[str(reason)] += n

    def fail(self, code: str, n: int = 1) -> None:
        self.failed += n
        self.failed_by_code[code] += n

    def merge(self, other: RunCounters) -> RunCounters:
        self.fetched += other.fetched
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.failed += other.failed
        self.skipped.update(other.skipped)
        self.failed_by_code.update(other.failed_by_code)
        self.note = self.note or other.note
        return self

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    @property
    def did_nothing(self) -> bool:
        return not (self.created or self.updated or self.failed)

    def summary(self) -> str:
        """One line for the status page and the log, e.g. ``"fetched 12, created 1, updated 3, skipped 8 (…)"``; when
        nothing was written it says why."""
        parts = [f"fetched {self.fetched}", f"created {self.created}", f"updated {self.updated}"]
        if self.unchanged:
            parts.append(f"unchanged {self.unchanged}")
        if self.skipped:
            detail = ", ".join(f"{n} {_REASON_TEXT.get(r, r)}" for r, n in self.skipped.most_common())
            parts.append(f"skipped {self.skipped_total} ({detail})")
        if self.failed:
            detail = ", ".join(f"{n} {c}" for c, n in self.failed_by_code.most_common())
            parts.append(f"failed {self.failed} ({detail})")
        text = ", ".join(parts)
        if self.did_nothing:
            text = f"nothing written: {self._why()} — {text}"
        return text

    def _why(self) -> str:
        if self.note:
            return self.note
        if self.fetched == 0 and not self.skipped:
            return "no changes to process"
        if self.skipped:
            reason, _ = self.skipped.most_common(1)[0]
            return f"all records skipped, mostly {_REASON_TEXT.get(reason, reason)}"
        if self.unchanged:
            return "every record was already in sync"
        return "no changes to process"

    def as_dict(self) -> dict[str, Any]:
        return {
            "fetched": self.fetched,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "skipped": dict(self.skipped),
            "failed_by_code": dict(self.failed_by_code),
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunCounters:
        return cls(
            fetched=int(data.get("fetched", 0)),
            created=int(data.get("created", 0)),
            updated=int(data.get("updated", 0)),
            unchanged=int(data.get("unchanged", 0)),
            failed=int(data.get("failed", 0)),
            skipped=Counter({str(k): int(v) for k, v in (data.get("skipped") or {}).items()}),
            failed_by_code=Counter({str(k): int(v) for k, v in (data.get("failed_by_code") or {}).items()}),
            note=str(data.get("note", "")),
        )

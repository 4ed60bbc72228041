"""Scheduled reconciliation maths ([R22]): compare both sides by key range, then by key, to find drift polling missed.

Each side is summarised as ``{crm_id: hash}`` — the CRM side from a query of the mapped fields
(:func:`.values.crm_hash` per record), the Loopline side from the last agreed hash per link (``last_read_hash`` /
``last_written_hash``). Ids are bucketed by a stable hash so both sides put a record in the same range; ranges whose
count and digest agree are skipped, and only differing ranges are compared key by key (and, on a real org, fetched
in detail). The repair itself is ordinary sync: re-read the records in :attr:`ReconcileDiff.to_refetch`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from .model import id18


def bucket_of(crm_id: str, buckets: int = 64) -> int:
    """Stable bucket of an id (15/18-char forms land in the same bucket)."""
    digest = hashlib.sha256(id18(crm_id).lower().encode()).digest()
    return int.from_bytes(digest[:4], "big") % buckets


@dataclass(frozen=True)
class RangeSummary:
    count: int
    digest: str


def summarise(items: Mapping[str, str], buckets: int = 64) -> dict[int, RangeSummary]:
    """Per bucket: how many records and a digest over their (id, hash) pairs (order-independent)."""
    grouped: dict[int, list[str]] = {}
    for crm_id, value_hash in items.items():
        grouped.setdefault(bucket_of(crm_id, buckets), []).append(f"{id18(crm_id).lower()}={value_hash}")
    return {
        b: RangeSummary(len(pairs), hashlib.sha256("\n".join(sorted(pairs)).encode()).hexdigest())
        for b, pairs in grouped.items()
    }


def differing_buckets(a: Mapping[int, RangeSummary], b: Mapping[int, RangeSummary]) -> list[int]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


@dataclass(frozen=True)
class ReconcileDiff:
    missing_in_loopline: tuple[str, ...]  # in the CRM, no link in Loopline (auto-create / matching decides)
    missing_in_crm: tuple[str, ...]  # linked in Loopline, gone from the CRM query (deleted / not visible)
    changed: tuple[str, ...]  # both sides have it, hashes differ

    @property
    def to_refetch(self) -> tuple[str, ...]:
        return (*self.missing_in_loopline, *self.changed)

    @property
    def in_sync(self) -> bool:
        return not (self.missing_in_loopline or self.missing_in_crm or self.changed)


def compare(loopline: Mapping[str, str], crm: Mapping[str, str], buckets: int = 64) -> ReconcileDiff:
    """Key-level differences, only looking inside buckets whose summaries differ."""
    left = {id18(k).lower(): (k, v) for k, v in loopline.items()}
    right = {id18(k).lower(): (k, v) for k, v in crm.items()}
    suspect = set(differing_buckets(summarise(loopline, buckets), summarise(crm, buckets)))
    missing_l: list[str] = []
    missing_c: list[str] = []
    changed: list[str] = []
    for key in sorted(set(left) | set(right)):
        if bucket_of(key, buckets) not in suspect:
            continue
        if key not in left:
            missing_l.append(right[key][0])
        elif key not in right:
            missing_c.append(left[key][0])
        elif left[key][1] != right[key][1]:
            changed.append(right[key][0])
    return ReconcileDiff(tuple(missing_l), tuple(missing_c), tuple(changed))

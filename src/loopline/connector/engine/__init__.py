"""The CRM connector's pure engine: plain data in, decisions out.

No Django, no HTTP, no database — stdlib only. The Django services and the Salesforce adapter build the inputs
(:class:`ProspectSnapshot`, :class:`CrmRecord`, :class:`SyncState`, :class:`ConnectorSettings`, mappings, describe
metadata, outbox items) and carry out the decisions.

Modules:

* :mod:`.model` — enums and dataclasses, :func:`default_mapping` ([R16], [R18], [R21]);
* :mod:`.values` — normalisation, blankness and hashing shared by everything below;
* :mod:`.matching` — prospect ↔ record matching ([R9]) and email changes ([R19]);
* :mod:`.creation` — who may create what ([R10]–[R12], [R15], [R31]);
* :mod:`.resolve` — field resolution ([R16]–[R18], [R13]) and echo suppression ([R24]);
* :mod:`.lifecycle` — conversion, deletion, merge, sharing visibility ([R13], [R31], [R32], [R35], [R36]);
* :mod:`.validate` — outgoing values against describe metadata ([R20]);
* :mod:`.batching` — outbox → push plan, results back per record ([R23], [R25]);
* :mod:`.capture` — watermarks, poll queries, adaptive interval ([R22]);
* :mod:`.reconcile` — range/key comparison for the scheduled reconciliation ([R22]);
* :mod:`.budget` — API budget ([R27]);
* :mod:`.errors` — error classification and retry timing ([R26]);
* :mod:`.counters` — run counters ([R29]).
"""

from .batching import BatchLimits, OutboxItem, PushPlan, WriteOp, WriteOutcome, plan_push
from .budget import ApiUsage, BudgetDecision, BudgetMode, BudgetPolicy, decide_budget, parse_limit_info
from .capture import Watermark, composite_poll_body, next_poll_interval, poll_query
from .counters import RunCounters
from .creation import (
    creation_payload,
    decide_crm_creation,
    decide_prospect_creation,
    plan_prospect_push,
    sync_gate,
)
from .errors import CrmError, ErrorCategory, classify, next_retry, parse_errors
from .lifecycle import LifecycleAction, decide_lifecycle
from .matching import Link, choose_crm_record, decide_email_change, match_prospect
from .model import (
    ConnectorSettings,
    CrmObject,
    CrmRecord,
    Direction,
    FieldKind,
    FieldMapping,
    MatchingMode,
    ProspectSnapshot,
    SkipReason,
    SyncBehaviour,
    SyncState,
    default_mapping,
)
from .reconcile import ReconcileDiff, compare
from .resolve import EchoCheck, Resolution, is_echo, record_hash, resolve, written_hash
from .validate import ObjectDescribe, ValidationProblem, ValidationResult, validate_payload
from .values import normalise, values_hash

__all__ = [
    "ApiUsage",
    "BatchLimits",
    "BudgetDecision",
    "BudgetMode",
    "BudgetPolicy",
    "ConnectorSettings",
    "CrmError",
    "CrmObject",
    "CrmRecord",
    "Direction",
    "EchoCheck",
    "ErrorCategory",
    "FieldKind",
    "FieldMapping",
    "LifecycleAction",
    "Link",
    "MatchingMode",
    "ObjectDescribe",
    "OutboxItem",
    "ProspectSnapshot",
    "PushPlan",
    "ReconcileDiff",
    "Resolution",
    "RunCounters",
    "SkipReason",
    "SyncBehaviour",
    "SyncState",
    "ValidationProblem",
    "ValidationResult",
    "Watermark",
    "WriteOp",
    "WriteOutcome",
    "choose_crm_record",
    "classify",
    "compare",
    "composite_poll_body",
    "creation_payload",
    "decide_budget",
    "decide_crm_creation",
    "decide_email_change",
    "decide_lifecycle",
    "decide_prospect_creation",
    "default_mapping",
    "is_echo",
    "match_prospect",
    "next_poll_interval",
    "next_retry",
    "normalise",
    "parse_errors",
    "parse_limit_info",
    "plan_prospect_push",
    "plan_push",
    "poll_query",
    "record_hash",
    "resolve",
    "sync_gate",
    "validate_payload",
    "values_hash",
    "written_hash",
]

"""Property tests for field resolution and conflict rules ([R16]–[R18], [R24]): for any values, times, behaviours and
settings, blanks never win, fixed fields flow their way, the behaviours pick their side, and resolution is idempotent
(apply it to both sides, resolve again: no writes — no ping-pong)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.connector.engine.model import (
    ConnectorSettings,
    CrmRecord,
    Direction,
    FieldKind,
    FieldMapping,
    MatchingMode,
    ProspectSnapshot,
    SyncBehaviour,
    SyncState,
    default_mapping,
)
from loopline.connector.engine.resolve import EchoVerdict, FieldOutcome, is_echo, resolve
from loopline.connector.engine.values import normalise

from .factories import CONNECTOR_USER, T0

MAPPINGS = default_mapping()
OBJECTS = ["Lead", "Contact", "PersonAccount"]

TEXTS = st.one_of(
    st.none(),
    st.sampled_from(
        ["", "  ", "Acme", " acme ", "Acme", "Beta\r\nLine", "Beta\nLine", "[not provided]", "Zed"]
    ),
    st.text(alphabet="ab \n", max_size=4),
)
EMAILS = st.one_of(st.none(), st.sampled_from(["", "ann@example.com", "ANN@example.com ", "bob@example.com"]))
INTS = st.one_of(st.none(), st.integers(-3, 3), st.sampled_from(["2", " 3 ", "0", ""]))
DECIMALS = st.one_of(
    st.none(),
    st.decimals(min_value=-1000, max_value=1000, places=2, allow_nan=False, allow_infinity=False),
    st.sampled_from([1.5, 2.0, "2.50", "", 0]),
)
IDS = st.one_of(
    st.none(), st.sampled_from(["", "005000000000001AAA", "005000000000001", "005000000000002AAA"])
)
TIMES = st.integers(0, 6).map(lambda m: T0 + timedelta(minutes=m))


def value_strategy(kind: FieldKind) -> st.SearchStrategy[Any]:
    return {
        FieldKind.TEXT: TEXTS,
        FieldKind.EMAIL: EMAILS,
        FieldKind.BOOLEAN: st.booleans(),
        FieldKind.INTEGER: INTS,
        FieldKind.DECIMAL: DECIMALS,
        FieldKind.ID: IDS,
    }[kind]


@st.composite
def scenarios(
    draw: st.DrawFn, *, with_baseline: bool = False
) -> tuple[ProspectSnapshot, CrmRecord, tuple[FieldMapping, ...], ConnectorSettings, SyncState | None]:
    object_type = draw(st.sampled_from(OBJECTS))
    mappings = []
    for m in MAPPINGS:
        if m.fixed:
            mappings.append(m)
            continue
        choices = [SyncBehaviour.USE_LOOPLINE, SyncBehaviour.USE_CRM, SyncBehaviour.MOST_RECENT_RECORD]
        if m.loopline_field == "opted_out":
            choices.append(SyncBehaviour.MOST_RECENT_FIELD)
        mappings.append(m.with_behaviour(draw(st.sampled_from(choices))))
    lvalues: dict[str, Any] = {}
    cvalues: dict[str, Any] = {}
    changed = {}
    history = {}
    for m in mappings:
        lvalues[m.loopline_field] = draw(value_strategy(m.kind))
        cf = m.crm_field(object_type)
        if cf:
            cvalues[cf] = draw(value_strategy(m.kind))
            if draw(st.booleans()):
                history[cf] = draw(TIMES)
        if draw(st.booleans()):
            changed[m.loopline_field] = draw(TIMES)
    use_history = draw(st.booleans())
    record = CrmRecord(
        object_type,
        "00Q000000000001AAA" if object_type == "Lead" else "003000000000001AAA",
        cvalues,
        draw(TIMES),
        created_date=T0,
        field_history=history if use_history else None,
    )
    prospect = ProspectSnapshot(
        1,
        lvalues,
        changed,
        draw(st.one_of(st.none(), TIMES)),
        crm_lead_id=record.id if object_type == "Lead" else "",
        crm_contact_id=record.id if object_type != "Lead" else "",
    )
    conf = ConnectorSettings(
        matching_mode=draw(st.sampled_from(list(MatchingMode))),
        blank_crm_values_overwrite=draw(st.booleans()),
        update_email_from_crm=draw(st.booleans()),
        connector_user_id=CONNECTOR_USER,
    )
    state = None
    if with_baseline:
        from loopline.connector.engine.values import field_digest

        baseline = {}
        for m in mappings:
            if draw(st.booleans()):
                baseline[m.loopline_field] = field_digest(m.kind, draw(value_strategy(m.kind)))
        state = SyncState(baseline=baseline)
    return prospect, record, tuple(mappings), conf, state


def apply(
    prospect: ProspectSnapshot, record: CrmRecord, res: Any, mappings: tuple[FieldMapping, ...]
) -> tuple[ProspectSnapshot, CrmRecord, SyncState]:
    """Apply a resolution to both sides the way the Django layer and the adapter would."""
    later = max([record.system_modstamp, *(prospect.field_changed_at.values())]) + timedelta(minutes=1)
    changed = dict(prospect.field_changed_at)
    changed.update(res.loopline_changed_at)
    new_prospect = replace(prospect, values={**prospect.values, **res.to_loopline}, field_changed_at=changed)
    history = dict(record.field_history) if record.field_history is not None else None
    if history is not None:
        for cf in res.to_crm:
            history[cf] = later
    new_record = replace(
        record,
        values={**record.values, **res.to_crm},
        system_modstamp=later if res.to_crm else record.system_modstamp,
        field_history=history,
        last_modified_by_id=CONNECTOR_USER if res.to_crm else record.last_modified_by_id,
    )
    state = SyncState(
        last_written_hash=res.crm_hash_after,
        last_read_hash=res.crm_hash_after,
        last_crm_modstamp=None,
        baseline=res.baseline_after,
    )
    return new_prospect, new_record, state


def _unique_email(conf: ConnectorSettings, m: FieldMapping) -> bool:
    return conf.matching_mode is MatchingMode.UNIQUE_EMAIL and m.loopline_field == "email"


PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(scenarios())
def test_blank_never_overwrites_filled(s):
    # [R17] whichever side is preferred, a blank never overwrites a filled value (except the BU setting, CRM → Loopline)
    prospect, record, mappings, conf, state = s
    res = resolve(prospect, record, mappings, conf, state)
    for m in mappings:
        cf = m.crm_field(record.object_type)
        if cf is None:
            continue
        lv = normalise(m.kind, prospect.values.get(m.loopline_field))
        cv = normalise(m.kind, record.values.get(cf))
        if cf in res.to_crm:
            assert normalise(m.kind, res.to_crm[cf]) is not None, (m.loopline_field, res.to_crm)
        if (
            m.loopline_field in res.to_loopline
            and normalise(m.kind, res.to_loopline[m.loopline_field]) is None
        ):
            assert conf.blank_crm_values_overwrite and lv is not None
            assert cv is None


@PROPS
@given(scenarios(with_baseline=True))
def test_fixed_fields_always_flow_their_way(s):
    # [R18] score/grade/campaign only Loopline → CRM; owner only CRM → Loopline (never overrides a CRM owner)
    prospect, record, mappings, conf, state = s
    res = resolve(prospect, record, mappings, conf, state)
    if res.skipped:  # e.g. [R19] unlinked after a CRM email change: nothing flows at all
        assert not res.has_writes
        return
    for m in mappings:
        cf = m.crm_field(record.object_type)
        if not m.fixed or cf is None:
            continue
        lv = normalise(m.kind, prospect.values.get(m.loopline_field))
        cv = normalise(m.kind, record.values.get(cf))
        if m.direction is Direction.TO_CRM:
            assert m.loopline_field not in res.to_loopline
            if lv is not None and lv != cv:
                assert normalise(m.kind, res.to_crm[cf]) == lv
        else:
            assert cf not in res.to_crm
            if cv is not None and lv != cv:
                assert normalise(m.kind, res.to_loopline[m.loopline_field]) == cv


@PROPS
@given(scenarios())
def test_behaviours_pick_their_side_when_both_filled(s):
    # [R16] use Loopline / use CRM / most recent record / most recent field, both sides filled and different
    prospect, record, mappings, conf, state = s
    res = resolve(prospect, record, mappings, conf, state)
    if res.skipped:
        return
    two_way = [
        m.loopline_field
        for m in mappings
        if m.direction is Direction.BOTH and m.crm_field(record.object_type)
    ]
    loopline_time = prospect.last_changed_at(two_way)
    for m in mappings:
        cf = m.crm_field(record.object_type)
        if m.fixed or cf is None or _unique_email(conf, m) or not m.crm_writable(record.object_type):
            continue
        lv = normalise(m.kind, prospect.values.get(m.loopline_field))
        cv = normalise(m.kind, record.values.get(cf))
        if lv is None or cv is None or lv == cv:
            continue
        if m.behaviour is SyncBehaviour.USE_LOOPLINE:
            expected = "loopline"
        elif m.behaviour is SyncBehaviour.USE_CRM:
            expected = "crm"
        elif m.behaviour is SyncBehaviour.MOST_RECENT_RECORD:
            expected = (
                "loopline" if loopline_time is not None and loopline_time > record.system_modstamp else "crm"
            )
        else:
            lt = prospect.field_changed_at.get(m.loopline_field) or loopline_time
            expected = "loopline" if lt is not None and lt > record.field_changed_at(cf) else "crm"
        if expected == "loopline":
            assert normalise(m.kind, res.to_crm[cf]) == lv
            assert m.loopline_field not in res.to_loopline
        else:
            assert normalise(m.kind, res.to_loopline[m.loopline_field]) == cv
            assert cf not in res.to_crm


@PROPS
@given(scenarios())
def test_read_only_crm_fields_are_never_written(s):
    # Contact company is Account.Name (read-only): never in to_crm.
    prospect, record, mappings, conf, state = s
    res = resolve(prospect, record, mappings, conf, state)
    for m in mappings:
        cf = m.crm_field(record.object_type)
        if cf is not None and not m.crm_writable(record.object_type):
            assert cf not in res.to_crm


@PROPS
@given(scenarios(with_baseline=True))
def test_resolution_is_idempotent_no_ping_pong(s):
    # [R16][R24][R25] apply the resolution to both sides, resolve again: nothing left to write
    prospect, record, mappings, conf, state = s
    res = resolve(prospect, record, mappings, conf, state)
    if res.skipped:
        assert not res.has_writes
        return
    p2, r2, state2 = apply(prospect, record, res, mappings)
    again = resolve(p2, r2, mappings, conf, state2)
    assert not again.has_writes, (again.to_loopline, again.to_crm, again.reasons)
    # ... and the CRM change the connector just wrote is recognised as its own echo ([R24]).
    if res.to_crm:
        check = is_echo(r2, SyncState(last_written_hash=res.crm_hash_after), CONNECTOR_USER, mappings)
        assert check.verdict is EchoVerdict.ECHO


@PROPS
@given(scenarios())
def test_equal_values_never_write(s):
    # normalised-equal values produce no write (emails case, whitespace, number formats)
    prospect, record, mappings, conf, state = s
    res = resolve(prospect, record, mappings, conf, state)
    for d in res.decisions:
        m = next(x for x in mappings if x.loopline_field == d.loopline_field)
        if d.crm_field is None:
            continue
        lv = normalise(m.kind, prospect.values.get(m.loopline_field))
        cv = normalise(m.kind, record.values.get(d.crm_field))
        if lv == cv:
            assert d.outcome is FieldOutcome.EQUAL
            assert d.crm_field not in res.to_crm and d.loopline_field not in res.to_loopline


@PROPS
@given(scenarios(), st.sampled_from(["converted", "deleted", "do_not_sync", "crm_deleted"]))
def test_record_level_blocks_never_write(s, block):
    # [R13] converted leads are never written; [R15] do not sync; [R31] deleted / CRM-deleted
    prospect, record, mappings, conf, state = s
    if block == "converted":
        record = replace(
            record, object_type="Lead", is_converted=True, converted_contact_id="003000000000001AAA"
        )
    elif block == "deleted":
        record = replace(record, is_deleted=True)
    elif block == "do_not_sync":
        prospect = replace(prospect, do_not_sync=True)
    else:
        prospect = replace(prospect, crm_deleted=True)
    res = resolve(prospect, record, mappings, conf, state)
    assert not res.has_writes and res.skipped

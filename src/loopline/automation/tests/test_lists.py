"""Lists ([M16]): static and dynamic membership, suppression, public lists and per-list unsubscribe."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from loopline.automation import criteria, selectors, services
from loopline.automation.models import ListMembership, ProspectList
from loopline.platform import actions
from loopline.prospects import services as prospect_services
from loopline.prospects.models import ActivityType

pytestmark = pytest.mark.django_db


def _p(bu, email, **data):
    return prospect_services.create_prospect(bu, {"email": email, **data})


def test_static_list_add_remove_and_counts(bu, marketing_access):  # [M16]
    pl = services.save_list(marketing_access, {"name": "Webinar", "kind": "static"})
    a, b = _p(bu, "a@x.test"), _p(bu, "b@x.test")
    assert services.add_to_list(bu, pl, [a.pk, b.pk]) == 2
    assert services.add_to_list(bu, pl, [a.pk]) == 0
    pl.refresh_from_db()
    assert pl.member_count == 2
    assert services.remove_from_list(bu, pl, [a.pk]) == 1
    pl.refresh_from_db()
    assert pl.member_count == 1
    assert set(selectors.list_recipient_ids(bu, [pl.pk], [])) == {b.pk}


def test_add_to_list_ignores_other_bu_and_deleted_prospects(bu, other_bu, marketing_access):
    pl = services.save_list(marketing_access, {"name": "L", "kind": "static"})
    foreign = _p(other_bu, "f@x.test")
    gone = _p(bu, "g@x.test")
    prospect_services.move_to_recycle_bin(gone)
    assert services.add_to_list(bu, pl, [foreign.pk, gone.pk]) == 0


def test_suppression_and_unsubscribe(bu, marketing_access):  # [M16]
    news = services.save_list(marketing_access, {"name": "News", "kind": "static", "is_public": True})
    suppress = services.save_list(marketing_access, {"name": "Competitors", "kind": "static"})
    a, b, c = _p(bu, "a@x.test"), _p(bu, "b@x.test"), _p(bu, "c@x.test")
    services.add_to_list(bu, news, [a.pk, b.pk, c.pk])
    services.add_to_list(bu, suppress, [b.pk])
    assert set(selectors.list_recipient_ids(bu, [news.pk], [suppress.pk])) == {a.pk, c.pk}
    # per-list unsubscribe: not a recipient any more, not opted out globally, and adding again does not re-add
    assert services.set_list_subscriptions(c, {news.pk: False}) == {news.pk: False}
    assert set(selectors.list_recipient_ids(bu, [news.pk], [suppress.pk])) == {a.pk}
    c.refresh_from_db()
    assert not c.opted_out
    assert services.add_to_list(bu, news, [c.pk]) == 0
    assert [(pl.pk, pl.subscribed) for pl in selectors.lists_for_prospect(c)] == [(news.pk, False)]
    assert services.set_list_subscriptions(c, {news.pk: True, suppress.pk: False}) == {news.pk: True}
    assert c.pk in set(selectors.list_recipient_ids(bu, [news.pk]))
    assert list(selectors.public_lists(bu)) == [news]


def test_dynamic_list_full_refresh_and_incremental(bu, marketing_access, django_capture_on_commit_callbacks):  # [M16]
    a = _p(bu, "a@x.test", industry="Software")
    _p(bu, "b@x.test", industry="Retail")
    tree = {"match": "all", "rules": [{"field": "industry", "op": "equals", "value": "software"}]}
    pl = services.save_list(marketing_access, {"name": "Software", "kind": "dynamic", "criteria": tree})
    assert pl.member_count == 1
    assert set(selectors.list_recipient_ids(bu, [pl.pk])) == {a.pk}
    with django_capture_on_commit_callbacks(execute=True):
        c = _p(bu, "c@x.test", industry="SOFTWARE")
    with django_capture_on_commit_callbacks(execute=True):
        prospect_services.update_prospect(a, {"industry": "Retail"})
    assert set(selectors.list_recipient_ids(bu, [pl.pk])) == {c.pk}
    pl.refresh_from_db()
    assert pl.member_count == 1
    with pytest.raises(ValidationError):
        services.add_to_list(bu, pl, [a.pk])


def test_dynamic_list_follows_activity(bu, marketing_access, django_capture_on_commit_callbacks):
    a = _p(bu, "a@x.test")
    tree = {"match": "all", "rules": [{"field": "activity", "op": "has", "value": {"type": 4, "days": 30}}]}
    pl = services.save_list(marketing_access, {"name": "Converted", "kind": "dynamic", "criteria": tree})
    assert pl.member_count == 0
    with django_capture_on_commit_callbacks(execute=True):
        prospect_services.record_activity(bu.pk, ActivityType.FORM_SUCCESS, prospect=a)
    assert list(selectors.list_recipient_ids(bu, [pl.pk])) == [a.pk]


def test_list_cycle_refused(bu, marketing_access):
    one = services.save_list(marketing_access, {"name": "One", "kind": "dynamic", "criteria": {
        "match": "all", "rules": [{"field": "score", "op": "gte", "value": 1}]}})
    two = services.save_list(marketing_access, {"name": "Two", "kind": "dynamic", "criteria": {
        "match": "all", "rules": [{"field": "list", "op": "member", "value": one.pk}]}})
    with pytest.raises(ValidationError, match="refer back"):
        services.save_list(marketing_access, {"criteria": {
            "match": "all", "rules": [{"field": "list", "op": "member", "value": two.pk}]}}, instance=one)


def test_list_actions_registered(bu, marketing_access):  # [M10]
    pl = services.save_list(marketing_access, {"name": "From form", "kind": "static"})
    dyn = services.save_list(marketing_access, {"name": "Dyn", "kind": "dynamic", "criteria": {
        "match": "all", "rules": [{"field": "score", "op": "gte", "value": 1}]}})
    cleaned = actions.validate_actions(bu, [{"type": "add_to_list", "list_id": "From form"}])
    assert cleaned == [{"type": "add_to_list", "list_id": pl.pk}]
    with pytest.raises(ValidationError, match="dynamic"):
        actions.validate_actions(bu, [{"type": "add_to_list", "list_id": dyn.pk}])
    p = _p(bu, "a@x.test")
    out = actions.run_actions(cleaned, actions.ActionContext(bu=bu, prospect=p, source="form"))
    assert out[0].ok and ListMembership.objects.filter(prospect_list=pl, prospect=p).exists()
    out = actions.run_actions([{"type": "remove_from_list", "list_id": pl.pk}],
                              actions.ActionContext(bu=bu, prospect=p, source="form"))
    assert out[0].ok and not ListMembership.objects.filter(prospect_list=pl, prospect=p).exists()


def test_criteria_validation_messages(bu):  # [M17]
    with pytest.raises(ValidationError, match="at least one"):
        criteria.validate(bu, {"match": "all", "rules": []})
    with pytest.raises(ValidationError, match="no longer exists"):
        criteria.validate(bu, {"match": "all", "rules": [{"field": "custom.gone", "op": "equals", "value": "x"}]})
    with pytest.raises(ValidationError, match="list no longer exists"):
        criteria.validate(bu, {"match": "all", "rules": [{"field": "list", "op": "member", "value": 99999}]})
    with pytest.raises(ValidationError, match="not a number"):
        criteria.validate(bu, {"match": "all", "rules": [{"field": "score", "op": "gt", "value": "lots"}]})
    assert ProspectList.objects.count() == 0


def test_recycle_bin_and_merge_keep_counts_and_memberships(bu, marketing_access, django_capture_on_commit_callbacks):
    pl = services.save_list(marketing_access, {"name": "Static", "kind": "static"})
    a, b = _p(bu, "a@x.test"), _p(bu, "b@x.test")
    services.add_to_list(bu, pl, [a.pk])
    with django_capture_on_commit_callbacks(execute=True):
        prospect_services.move_to_recycle_bin(a)
    pl.refresh_from_db()
    assert pl.member_count == 0 and list(selectors.list_recipient_ids(bu, [pl.pk])) == []
    with django_capture_on_commit_callbacks(execute=True):
        prospect_services.undelete(a)
    pl.refresh_from_db()
    assert pl.member_count == 1 == services.recount(pl)
    with django_capture_on_commit_callbacks(execute=True):
        prospect_services.merge_prospects(b, a)
    assert list(selectors.list_recipient_ids(bu, [pl.pk])) == [b.pk]


def test_builder_round_trip(bu):  # the builder's form encoding gives back the tree it rendered
    from django.http import QueryDict

    from loopline.automation import builder

    tree = {"match": "any", "rules": [
        {"field": "industry", "op": "in", "value": "Software, Retail"},
        {"match": "all", "rules": [{"field": "activity", "op": "has", "value": {
            "type": "4", "asset_type": "form", "asset_id": "3", "url_contains": "", "days": "30", "min_count": "2"}}]},
    ]}
    post = QueryDict(mutable=True)
    post.update({"c__r__kind": "group", "c__r__match": "any", "c__r-0__kind": "rule", "c__r-0__field": "industry",
                 "c__r-0__op": "in", "c__r-0__value": "Software, Retail", "c__r-1__kind": "group",
                 "c__r-1__match": "all", "c__r-1-0__kind": "rule", "c__r-1-0__field": "activity",
                 "c__r-1-0__op": "has", "c__r-1-0__type": "4", "c__r-1-0__asset_type": "form",
                 "c__r-1-0__asset_id": "3", "c__r-1-0__days": "30", "c__r-1-0__min_count": "2"})
    assert builder.tree_from_post(post) == tree
    cleaned = criteria.validate(bu, tree)
    assert cleaned["rules"][0]["value"] == ["Software", "Retail"]
    assert cleaned["rules"][1]["rules"][0]["value"] == {"type": 4, "asset_type": "form", "asset_id": 3, "days": 30,
                                                        "min_count": 2}
    removed = builder.apply_op(builder.tree_from_post(post), "remove:r-1", criteria.field_catalogue(bu))
    assert removed["rules"] == [tree["rules"][0]]
    described = criteria.describe(bu, cleaned)
    assert described.startswith("Any of: Industry is one of") and "form success on form #3 at least 2 times" in described

"""BU and role isolation of prospects ([M1]): one scoping function, 404 for anything out of scope."""

import pytest
from django.http import Http404

from loopline.accounts import services as account_services
from loopline.accounts.access import Access
from loopline.prospects import selectors, services


@pytest.fixture
def prospects(bu, other_bu, sales_user, admin_user):
    mine = services.create_prospect(bu, {"email": "mine@x.test"}, extra={"assigned_user": sales_user})
    theirs = services.create_prospect(bu, {"email": "theirs@x.test"}, extra={"assigned_user": admin_user})
    unassigned = services.create_prospect(bu, {"email": "nobody@x.test"})
    foreign = services.create_prospect(other_bu, {"email": "mine@x.test"})
    return mine, theirs, unassigned, foreign


def test_sales_sees_only_assigned_prospects(prospects, sales_access):
    mine, _theirs, _unassigned, _foreign = prospects
    visible = set(selectors.scoped_prospects(sales_access).values_list("pk", flat=True))
    assert visible == {mine.pk}


@pytest.mark.parametrize("index", [1, 2, 3])
def test_sales_gets_404_for_guessed_ids(prospects, sales_access, index):
    with pytest.raises(Http404):
        selectors.get_prospect(sales_access, prospects[index].pk)


def test_admin_sees_whole_bu_but_never_another_bu(prospects, admin_access):
    mine, theirs, unassigned, foreign = prospects
    visible = set(selectors.scoped_prospects(admin_access).values_list("pk", flat=True))
    assert visible == {mine.pk, theirs.pk, unassigned.pk}
    with pytest.raises(Http404):
        selectors.get_prospect(admin_access, foreign.pk)


def test_member_of_two_bus_sees_each_bu_separately(prospects, bu, other_bu, marketing_user):
    _mine, _theirs, _unassigned, foreign = prospects
    account_services.set_membership(other_bu, marketing_user, "sales_manager")
    in_bu = Access.for_user(marketing_user, bu)
    in_other = Access.for_user(marketing_user, other_bu)
    assert foreign.pk not in set(selectors.scoped_prospects(in_bu).values_list("pk", flat=True))
    assert set(selectors.scoped_prospects(in_other).values_list("pk", flat=True)) == {foreign.pk}


def test_non_numeric_and_deleted_ids_are_404(prospects, admin_access):
    with pytest.raises(Http404):
        selectors.get_prospect(admin_access, "1 OR 1=1")
    services.move_to_recycle_bin(prospects[0], actor=admin_access.user)
    with pytest.raises(Http404):
        selectors.get_prospect(admin_access, prospects[0].pk)
    assert selectors.get_prospect(admin_access, prospects[0].pk, include_deleted=True).is_deleted


def test_custom_role_scope_and_abilities(bu, admin_access, db):
    role = account_services.save_custom_role(
        admin_access, "Field marketing", ["prospects.view", "lists.view"], prospect_scope="assigned"
    )
    user = account_services.create_user("field@acme.test", password="x" * 12)
    account_services.set_membership(bu, user, role)
    access = Access.for_user(user, bu)
    assert access.can("prospects.view") and not access.can("prospects.delete")
    assert not access.sees_all_prospects
    with pytest.raises(Exception, match="Unknown abilities"):
        account_services.save_custom_role(admin_access, "Bad", ["prospects.fly"])

"""Dynamic content editor: create/edit/delete blocks, nh3 sanitising on save, preview as a prospect, delete refused
while an email uses the block, and the email editor listing blocks to insert ([M24])."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from loopline.conftest import PASSWORD

pytestmark = pytest.mark.django_db



def _post_data(**overrides):
    data = {
        "name": "Industry hero",
        "key": "industry-hero",
        "field": "industry",
        "default_html": "<p>Reports for every team</p>",
        "v-TOTAL_FORMS": "3",
        "v-INITIAL_FORMS": "0",
        "v-MIN_NUM_FORMS": "0",
        "v-MAX_NUM_FORMS": "100",
        "v-0-value": "Retail",
        "v-0-html": '<p onclick="steal()">Shelf analytics<script>x()</script></p>',
        "v-1-value": "Banking",
        "v-1-html": '<p>Risk <a href="javascript:alert(1)">reports</a></p>',
        "v-2-value": "",
        "v-2-html": "",
    }
    data.update(overrides)
    return data


def test_create_sanitises_and_preview_picks_variation_by_field(bu, client_as):
    from loopline.emails.models import DynamicContent
    from loopline.prospects.models import Prospect

    response = client_as.post("/emails/dynamic/new/", _post_data())
    block = DynamicContent.objects.get(bu=bu, key="industry-hero")
    assert response.status_code == 302 and response["Location"] == f"/emails/dynamic/{block.pk}/preview/"
    assert block.field == "industry"
    # Stored sanitised (nh3): what the editor shows is what is sent.
    assert block.variations == [
        {"value": "Retail", "html": "<p>Shelf analytics</p>"},
        {"value": "Banking", "html": '<p>Risk <a rel="noopener noreferrer">reports</a></p>'},
    ]
    retail = Prospect.objects.create(bu=bu, email="r@shop.test", email_key="r@shop.test", industry="retail")
    other = Prospect.objects.create(bu=bu, email="o@farm.test", email_key="o@farm.test", industry="Farming")
    page = client_as.get(f"/emails/dynamic/{block.pk}/preview/?prospect={retail.pk}").content.decode()
    assert "the variation for “Retail”" in page and "Shelf analytics" in page  # case-insensitive match
    page = client_as.get(f"/emails/dynamic/{block.pk}/preview/?prospect={other.pk}").content.decode()
    assert "industry = “Farming”:\nthe default" in page and "Reports for every team" in page
    listing = client_as.get("/emails/dynamic/").content.decode()
    assert "Industry hero" in listing and "industry-hero" in listing


def test_block_renders_in_email_preview_for_that_prospect(bu, client_as, marketing_access, make_email):
    from loopline.emails import services
    from loopline.prospects.models import Prospect

    services.save_dynamic_content(
        marketing_access,
        {"name": "Hero", "key": "hero", "field": "industry", "default_html": "<p>Generic</p>"},
        [{"value": "retail", "html": "<p>For shops</p>"}],
    )
    body = '<p>{{ dynamic("hero") }} {{ unsubscribe_url }} {{ preferences_url }}</p>'
    email = make_email(body_format="html", body=body)
    shop = Prospect.objects.create(bu=bu, email="s@shop.test", email_key="s@shop.test", industry="Retail")
    _subject, html, _text = services.preview(marketing_access, email, shop)
    assert "For shops" in html and "Generic" not in html


def test_invalid_input_is_refused_with_clear_errors(bu, client_as, marketing_access):
    from loopline.emails import services
    from loopline.emails.models import DynamicContent

    bad_field = client_as.post("/emails/dynamic/new/", _post_data(field="shoe_size"))
    assert bad_field.status_code == 400 and not DynamicContent.objects.exists()
    dup = client_as.post("/emails/dynamic/new/", _post_data(**{"v-1-value": "RETAIL"}))
    assert dup.status_code == 400 and "two variations" in dup.content.decode()
    no_value = client_as.post("/emails/dynamic/new/", _post_data(**{"v-1-value": ""}))
    assert no_value.status_code == 400 and "needs the field value" in no_value.content.decode()
    garbage = client_as.post("/emails/dynamic/new/", {"name": "x", "v-TOTAL_FORMS": "nope"})
    assert garbage.status_code == 400
    services.save_dynamic_content(marketing_access, {"name": "A", "key": "a", "field": "city"}, [])
    with pytest.raises(ValidationError, match="already uses the key"):
        services.save_dynamic_content(marketing_access, {"name": "B", "key": "a", "field": "city"}, [])
    with pytest.raises(ValidationError, match="lower-case"):
        services.save_dynamic_content(marketing_access, {"name": "B", "key": "Bad Key", "field": "city"}, [])
    assert DynamicContent.objects.count() == 1


def test_custom_fields_can_pick_a_block(bu, marketing_access):
    from loopline.emails import services
    from loopline.prospects.models import CustomField, Prospect

    CustomField.objects.create(bu=bu, name="Tier", api_name="tier")
    assert "tier" in services.dynamic_content_fields(bu)
    block = services.save_dynamic_content(
        marketing_access,
        {"name": "Tier", "key": "tier", "field": "tier"},
        [{"value": "gold", "html": "<b>Gold perks</b>"}],
    )
    gold = Prospect.objects.create(bu=bu, email="g@x.test", email_key="g@x.test", custom={"tier": "Gold"})
    result = services.preview_dynamic_content(block, gold)
    assert result == {"value": "Gold", "matched": "gold", "html": "<b>Gold perks</b>"}


def test_edit_and_delete_refused_while_an_email_uses_the_block(bu, client_as, marketing_access, make_email):
    from loopline.emails import services
    from loopline.emails.models import DynamicContent

    block = services.save_dynamic_content(
        marketing_access, {"name": "Hero", "key": "hero", "field": "industry"}, []
    )
    email = make_email(
        name="Spring news",
        body_format="html",
        body="<p>{{ dynamic('hero') }} {{ unsubscribe_url }} {{ preferences_url }}</p>",
    )
    page = client_as.get(f"/emails/dynamic/{block.pk}/delete/")
    assert "Spring news" in page.content.decode() and b'id="dynamic-in-use"' in page.content
    refused = client_as.post(f"/emails/dynamic/{block.pk}/delete/", follow=True)
    assert "is used by Spring news" in refused.content.decode()
    assert DynamicContent.objects.filter(pk=block.pk).exists()
    renamed = client_as.post(f"/emails/dynamic/{block.pk}/", _post_data(name="Hero", key="hero-2"))
    assert renamed.status_code == 400 and "cannot change while emails use it" in renamed.content.decode()
    # Once the email no longer uses it, it can go.
    email.body = "<p>{{ unsubscribe_url }} {{ preferences_url }}</p>"
    email.save()
    gone = client_as.post(f"/emails/dynamic/{block.pk}/delete/")
    assert gone.status_code == 302 and not DynamicContent.objects.filter(pk=block.pk).exists()


def test_other_bu_blocks_are_404_and_sales_cannot_manage(bu, other_bu, client_as, sales_user):
    from loopline.emails.models import DynamicContent

    theirs = DynamicContent.objects.create(bu=other_bu, name="Theirs", key="theirs", field="city")
    for url in (
        f"/emails/dynamic/{theirs.pk}/",
        f"/emails/dynamic/{theirs.pk}/preview/",
        f"/emails/dynamic/{theirs.pk}/delete/",
    ):
        assert client_as.get(url).status_code == 404
    assert client_as.post(f"/emails/dynamic/{theirs.pk}/delete/").status_code == 404
    assert DynamicContent.objects.filter(pk=theirs.pk).exists()
    sales = Client()
    assert sales.login(email=sales_user.email, password=PASSWORD)
    assert sales.get("/emails/dynamic/").status_code == 403
    assert sales.post("/emails/dynamic/new/", _post_data()).status_code == 403


def test_email_editor_lists_blocks_to_insert(bu, client_as, marketing_access):
    from loopline.emails import services

    services.save_dynamic_content(
        marketing_access, {"name": "Industry hero", "key": "industry-hero", "field": "industry"}, []
    )
    page = client_as.get("/emails/new/").content.decode()
    assert 'data-insert-dynamic="industry-hero"' in page
    assert '"key": "industry-hero"' in page  # the builder's block list (json_script)

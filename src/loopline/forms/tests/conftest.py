import pytest

from loopline.forms import services
from loopline.tracking import services as tracking_services
from loopline.tracking.capture import limiter


@pytest.fixture(autouse=True)
def _fresh_limits():
    limiter.reset()
    tracking_services._config_cache.clear()
    yield
    limiter.reset()


@pytest.fixture
def contact_form(marketing_access):
    return services.save_form(marketing_access, {"name": "Contact us", "actions": [
        {"type": "add_tag", "tag": "contact"}, {"type": "adjust_score", "points": 5}]}, [
        {"prospect_field": "email", "label": "Email"},
        {"prospect_field": "first_name", "label": "First name", "required": True},
        {"prospect_field": "company", "label": "Company", "progressive": True},
        {"prospect_field": "source", "kind": "hidden", "default_value": "website"},
    ])

import pytest

from loopline.tracking import services
from loopline.tracking.capture import limiter


@pytest.fixture(autouse=True)
def _fresh_limits():
    limiter.reset()
    services._config_cache.clear()
    yield
    limiter.reset()


@pytest.fixture
def tracker(bu):
    config = services.tracker_config(bu)
    return config


@pytest.fixture
def prospect(bu):
    from loopline.prospects import services as ps

    return ps.create_prospect(bu, {"email": "pat@example.com", "first_name": "Pat"})

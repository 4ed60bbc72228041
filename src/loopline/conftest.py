"""Shared fixtures for Loopline's tests: business units, users in each built-in role, and their access contexts."""

from __future__ import annotations

import pytest

PASSWORD = "correct-horse-battery-staple"


@pytest.fixture
def bu(db):
    from loopline.accounts import services as account_services

    return account_services.create_business_unit("Acme Marketing", postal_address="1 Main St, Springfield")


@pytest.fixture
def other_bu(db):
    from loopline.accounts import services as account_services

    return account_services.create_business_unit("Globex Marketing")


def _member(bu, email: str, role: str):
    from loopline.accounts import services as account_services

    user = account_services.create_user(email, password=PASSWORD, first_name=role.title())
    account_services.set_membership(bu, user, role)
    return user


@pytest.fixture
def admin_user(bu):
    return _member(bu, "admin@acme.test", "administrator")


@pytest.fixture
def marketing_user(bu):
    return _member(bu, "marketer@acme.test", "marketing")


@pytest.fixture
def sales_manager_user(bu):
    return _member(bu, "manager@acme.test", "sales_manager")


@pytest.fixture
def sales_user(bu):
    return _member(bu, "rep@acme.test", "sales")


def _access(user, bu):
    from loopline.accounts.access import Access

    return Access.for_user(user, bu)


@pytest.fixture
def admin_access(admin_user, bu):
    return _access(admin_user, bu)


@pytest.fixture
def sales_access(sales_user, bu):
    return _access(sales_user, bu)


@pytest.fixture
def marketing_access(marketing_user, bu):
    return _access(marketing_user, bu)

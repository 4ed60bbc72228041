from crmsandbox.tests.fixtures import admin_http, own_sandbox, sandbox, sf  # noqa: F401

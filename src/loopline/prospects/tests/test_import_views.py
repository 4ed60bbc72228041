"""The import pages through Django's test client: upload -> map -> progress -> done, rejects download, access."""

from __future__ import annotations

import csv
import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from loopline.conftest import PASSWORD
from loopline.platform.models import Job
from loopline.prospects import importing
from loopline.prospects.models import Prospect


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def login(client, user):
    assert client.login(username=user.email, password=PASSWORD)
    return client


def upload(client, text: str, name: str = "people.csv"):
    return client.post(reverse("prospects:import"), {"file": SimpleUploadedFile(name, text.encode(), "text/csv")})


def test_full_flow(client, bu, marketing_user, django_capture_on_commit_callbacks):
    login(client, marketing_user)
    assert client.get(reverse("prospects:import")).status_code == 200
    response = upload(client, "E-mail,Org,Shoe\nada@example.com,Acme,42\nbad-email,X,1\n")
    job = Job.objects.get(kind="import", bu=bu)
    assert response.status_code == 302 and response["Location"] == reverse("prospects:import_map", args=[job.pk])
    assert (importing.media_path(job.params["path"])).is_file()

    page = client.get(reverse("prospects:import_map", args=[job.pk]))
    assert page.status_code == 200
    body = page.content.decode()
    assert 'value="email" selected' in body and "ada@example.com" in body

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(reverse("prospects:import_map", args=[job.pk]),
                               {"col_0": "email", "col_1": "company", "col_2": "", "match": "email",
                                "update_existing": "on"})
    assert response.status_code == 302 and response["Location"] == reverse("prospects:import_job", args=[job.pk])
    assert callbacks  # the task is enqueued on commit (the Celery backend adds its own send-on-commit callback)
    from django_tasks_db.models import DBTaskResult

    from loopline.prospects.tasks import run_import

    if run_import.get_backend().__class__.__name__ in ("DatabaseBackend", "CeleryBackend"):
        queued = DBTaskResult.objects.get()  # both backends keep the task as a row
        assert queued.task_path.endswith("prospects.tasks.run_import") and queued.args_kwargs["args"] == [job.pk]
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED and job.params["mapping"] == ["email", "company", None]

    status = client.get(reverse("prospects:import_status", args=[job.pk]))
    assert 'hx-trigger="every 1s"' in status.content.decode()

    run_import.call(job.pk)  # what the worker does (a no-op if an immediate backend already ran it)
    page = client.get(reverse("prospects:import_job", args=[job.pk])).content.decode()
    assert "Import finished" in page and 'hx-trigger="every 1s"' not in page and "Download rejected rows" in page
    assert Prospect.objects.get(bu=bu, email="ada@example.com").company == "Acme"

    report = client.get(reverse("prospects:import_rejects", args=[job.pk]))
    assert report.status_code == 200
    rows = list(csv.DictReader(io.StringIO(b"".join(report.streaming_content).decode("utf-8-sig"))))
    assert rows[0]["Row"] == "3" and "not a valid email" in rows[0]["Reason"]

    # A finished job's mapping page sends you to its progress page.
    assert client.get(reverse("prospects:import_map", args=[job.pk])).status_code == 302


def test_mapping_errors_are_shown(client, bu, marketing_user):
    login(client, marketing_user)
    upload(client, "a,b\nx@y.test,1\n")
    job = Job.objects.get(kind="import")
    response = client.post(reverse("prospects:import_map", args=[job.pk]), {"col_0": "email", "col_1": "email"})
    assert response.status_code == 400 and "both mapped to" in response.content.decode()
    response = client.post(reverse("prospects:import_map", args=[job.pk]), {"col_0": "company", "col_1": "nope"})
    assert response.status_code == 400 and "choose a field from the list" in response.content.decode()
    response = client.post(reverse("prospects:import_map", args=[job.pk]), {"col_0": "company"})
    assert response.status_code == 400 and "Map a column to Email" in response.content.decode()


def test_bad_uploads(client, bu, marketing_user):
    login(client, marketing_user)
    response = client.post(reverse("prospects:import"), {})
    assert response.status_code == 400 and "Choose a CSV file" in response.content.decode()
    response = upload(client, "")
    assert response.status_code == 400 and "empty" in response.content.decode()
    assert not Job.objects.exists()


def test_sales_cannot_import(client, bu, sales_user):
    login(client, sales_user)
    assert client.get(reverse("prospects:import")).status_code == 403
    assert upload(client, "email\na@b.test\n").status_code == 403


def test_other_bu_job_ids_are_404(client, bu, other_bu, marketing_user):
    job = importing.create_job(other_bu, importing.save_upload([b"email\nx@y.test\n"], "x.csv"), "x.csv")
    login(client, marketing_user)
    for name in ("import_job", "import_map", "import_status", "import_rejects"):
        assert client.get(reverse(f"prospects:{name}", args=[job.pk])).status_code == 404, name


def test_anonymous_is_sent_to_login(client, bu):
    response = client.get(reverse("prospects:import"))
    assert response.status_code == 302 and "login" in response["Location"]

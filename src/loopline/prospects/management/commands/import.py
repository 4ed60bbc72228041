"""``loopline import --bu SLUG FILE``: import prospects from a CSV file, with a progress bar and a rejects report."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from loopline.accounts.models import BusinessUnit
from loopline.prospects import importing


class Command(BaseCommand):
    help = "Import prospects from a CSV file (create or update, matched by email or CRM id)."

    def add_arguments(self, parser):
        parser.add_argument("file", help="CSV file (UTF-8, header row with column names)")
        parser.add_argument("--bu", required=True, help="Business unit slug")
        parser.add_argument("--map", action="append", default=[], metavar="COLUMN=FIELD",
                            help="Map a column to a field (repeatable); COLUMN= ignores the column")
        parser.add_argument("--match", choices=["email", "crm_id"], help="Default: the business unit's matching mode")
        parser.add_argument("--undelete", action="store_true", help="Restore matching prospects from the recycle bin")
        parser.add_argument("--no-update", action="store_true", help="Only create new prospects; leave existing ones")
        parser.add_argument("--overwrite-blanks", action="store_true", help="Blank cells clear stored values")
        parser.add_argument("--timeline", action="store_true",
                            help="Add an 'Imported from FILE' entry to each created or updated prospect's timeline")
        parser.add_argument("--batch-size", type=int, default=importing.BATCH_SIZE)
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, **opts):
        bu = BusinessUnit.objects.filter(slug=opts["bu"]).first()
        if bu is None:
            raise CommandError(f"No business unit with the slug '{opts['bu']}'")
        path = Path(opts["file"])
        if not path.is_file():
            raise CommandError(f"No such file: {path}")
        overrides = {}
        for item in opts["map"]:
            column, sep, field = item.partition("=")
            if not sep:
                raise CommandError(f"--map wants COLUMN=FIELD, got '{item}'")
            overrides[column.strip()] = field.strip()
        options = importing.ImportOptions(
            match=opts["match"], update_existing=not opts["no_update"], undelete=opts["undelete"],
            overwrite_with_blanks=opts["overwrite_blanks"], timeline_entry=opts["timeline"],
            batch_size=max(1, opts["batch_size"]),
        )
        console = Console(file=self.stderr._out, stderr=True)
        # Check the file and the mapping before anything is written.
        try:
            header, _ = importing.read_csv(path)
            mapping = importing.build_mapping(header, importing.field_specs(bu.pk), overrides)
            importing.check_mapping(bu, mapping, options.match)
        except importing.ImportSetupError as exc:
            raise CommandError(str(exc)) from None
        relative = importing.save_upload(_chunks(path), path.name)
        job = importing.create_job(bu, relative, path.name)
        importing.configure_job(job, mapping, options)
        total = job.total
        columns = [TextColumn("[bold]Importing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                   TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=console, disable=opts["no_progress"]) as bar:
            task = bar.add_task("import", total=total or None, info="")

            def progress(result, estimate):
                bar.update(task, completed=result.rows, total=max(estimate, result.rows) or None,
                           info=f"{result.created} new, {result.updated} updated, {result.rejected} rejected")

            job = importing.run_job(job.pk, progress=progress)
        if job is None or job.status != job.Status.SUCCEEDED:
            raise CommandError(job.error if job else "The import did not run")
        r = job.result
        out = self.stdout
        out.write(f"Imported {r['rows']} rows from {path.name} into {bu.name} in {r['seconds']:.1f}s (job {job.pk}):")
        out.write(f"  created {r['created']}, updated {r['updated']}, unchanged {r['unchanged']}, "
                  f"skipped {r['skipped']}, restored from recycle bin {r['undeleted']}, rejected {r['rejected']}")
        for note in r["notes"]:
            out.write(f"  note: {note}")
        if r["rejects_path"]:
            out.write(f"  rejected rows with reasons: {importing.media_path(r['rejects_path'])}")
            for err in r["errors_sample"][:5]:
                out.write(f"    row {err['row']}{' ' + err['column'] if err['column'] else ''}: {err['reason']}")


def _chunks(path: Path):
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            yield chunk

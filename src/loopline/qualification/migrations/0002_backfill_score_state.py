"""Prospects scored before this app existed: their activities' recorded points become their ScoreState, so the
first rescore moves scores by exactly the difference the new rules make."""

from django.db import migrations


def backfill(apps, schema_editor):
    Activity = apps.get_model("prospects", "Activity")
    ScoreState = apps.get_model("qualification", "ScoreState")
    qn = schema_editor.connection.ops.quote_name
    schema_editor.execute(
        f"INSERT INTO {qn(ScoreState._meta.db_table)} (prospect_id, bu_id, activity_points) "
        f"SELECT prospect_id, MIN(bu_id), SUM(points) FROM {qn(Activity._meta.db_table)} "
        f"WHERE prospect_id IS NOT NULL AND points <> 0 GROUP BY prospect_id"
    )


class Migration(migrations.Migration):
    dependencies = [("qualification", "0001_scoring_grading"), ("prospects", "0001_initial")]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]

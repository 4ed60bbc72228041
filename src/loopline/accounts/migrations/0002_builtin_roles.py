from django.db import migrations

BUILTIN = [
    ("administrator", "Administrator", "all"),
    ("marketing", "Marketing", "all"),
    ("sales_manager", "Sales Manager", "all"),
    ("sales", "Sales", "assigned"),
]


def create_roles(apps, schema_editor):
    Role = apps.get_model("accounts", "Role")
    for key, name, scope in BUILTIN:
        Role.objects.update_or_create(bu=None, key=key, defaults={"name": name, "prospect_scope": scope, "abilities": []})


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]
    operations = [migrations.RunPython(create_roles, migrations.RunPython.noop)]

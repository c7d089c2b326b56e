"""Beat entry for compute's own eviction of unused cached pool copies (editable in admin).

It used to run inside the catalogue's GC sweep; the catalogue no longer knows about pools."""

from django.conf import settings
from django.db import migrations

TASK_NAME = "Evict unused pool copies"


def create_schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    every, _ = IntervalSchedule.objects.get_or_create(
        every=settings.STENCIL_GC_INTERVAL_SECONDS, period="seconds"
    )
    PeriodicTask.objects.get_or_create(
        name=TASK_NAME,
        defaults={"task": "agents_app.tasks.pool_copies_evict_task", "interval": every},
    )


def drop_schedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=TASK_NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("agents_app", "0008_vm_pools"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_schedule, drop_schedule)]

"""Beat entry of compute's reaper (pool copies, VM deadlines, certificate installs)."""

from django.conf import settings
from django.db import migrations

TASK_NAME = "Reap expired pool copies, VM transitions and certificate installs"


def create_schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    every, _ = IntervalSchedule.objects.get_or_create(
        every=settings.STENCIL_REAPER_INTERVAL_SECONDS, period="seconds"
    )
    PeriodicTask.objects.get_or_create(
        name=TASK_NAME,
        defaults={"task": "agents_app.tasks.reap_expired_task", "interval": every, "enabled": True},
    )


def drop_schedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=TASK_NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("agents_app", "0012_vm_transition_deadline_and_certificate_requeue"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_schedule, drop_schedule)]

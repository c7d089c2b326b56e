"""The Celery application shared by the web process, the workers and beat."""

import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
# Celery runs Django's system checks when a worker starts; the URL check among them loads the
# URLconf and every admin module, a fifth of a worker's memory (project/admin_apps.py). The
# checks run where the code is deployed (`manage.py check`, `migrate`) and in the web process.
os.environ.setdefault("CELERY_SKIP_CHECKS", "true")

app = Celery("stencil")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def sync_stores_when_a_storage_worker_starts(sender, **kwargs) -> None:
    """Template sync after a restart (seed 003): a storage worker asks for one when it is up."""
    from django.conf import settings

    consumed = set(sender.app.amqp.queues.consume_from or {})
    if settings.STENCIL_STORAGE_QUEUE in consumed:
        sender.app.send_task("templates_app.tasks.template_sync_task")

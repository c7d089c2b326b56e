"""Version tasks: thin wrappers over versions_app.services."""

from celery import shared_task

from . import services


@shared_task(name="versions_app.tasks.rebuild_latest_followers_task", acks_late=True)
def rebuild_latest_followers_task(base_template_id: int) -> int:
    """A new version was created: rebuild the stopped stateless VMs that follow 'latest'."""
    return services.rebuild_latest_followers(base_template_id=base_template_id)

"""The operator console's look: django-unfold's settings (branding, sidebar navigation).

The sidebar is ordered by what operators use, not by app: the catalogue first, then versions,
VMs, the infrastructure, accounts, and the machinery (tasks, schedules, tokens) last. Each item is
shown to whoever may view its model, so a staff user without a permission does not see a link
that would answer 403. Imported by project.settings: nothing here touches models at import time.
"""

from collections.abc import Callable

from django.http import HttpRequest
from django.templatetags.static import static
from django.urls import reverse_lazy


def can_view(*models: str) -> Callable[[HttpRequest], bool]:
    """A sidebar permission callback: may the user view (or change) any of these models?"""

    def check(request: HttpRequest) -> bool:
        user = request.user
        for label in models:
            app_label, model = label.split(".")
            if user.has_perm(f"{app_label}.view_{model}") or user.has_perm(
                f"{app_label}.change_{model}"
            ):
                return True
        return False

    return check


def item(title: str, icon: str, model: str) -> dict:
    """A sidebar link to a model's list, `model` as "app_label.modelname"."""
    app_label, name = model.split(".")
    return {
        "title": title,
        "icon": icon,
        "link": reverse_lazy(f"admin:{app_label}_{name}_changelist"),
        "permission": can_view(model),
    }


NAVIGATION = [
    {
        "title": "Overview",
        "items": [
            {"title": "Dashboard", "icon": "dashboard", "link": reverse_lazy("admin:index")},
        ],
    },
    {
        "title": "Templates & ISOs",
        "separator": True,
        "items": [
            item("Templates & ISOs", "album", "templates_app.template"),
            item("Store copies", "cloud_download", "templates_app.templatestoreref"),
            item("GC sweep runs", "delete_sweep", "templates_app.gcsweeprun"),
        ],
    },
    {
        "title": "Versions",
        "separator": True,
        "items": [
            item("Channels", "alt_route", "versions_app.channel"),
        ],
    },
    {
        "title": "VMs & pools",
        "separator": True,
        "items": [
            item("Virtual machines", "computer", "agents_app.virtualmachine"),
            item("VM pools", "stacks", "agents_app.vmpool"),
            item("VM snapshots", "photo_camera", "agents_app.vmsnapshot"),
        ],
    },
    {
        "title": "Hosts & storage",
        "separator": True,
        "items": [
            item("Hosts", "dns", "agents_app.host"),
            item("Primary pools", "storage", "agents_app.primarypool"),
            item("Pool copies", "content_copy", "agents_app.templatepoolref"),
            item("Image stores", "hard_drive", "templates_app.imagestore"),
            item("Zones", "public", "templates_app.zone"),
            item(
                "Direct-download certificates", "verified", "agents_app.directdownloadcertificate"
            ),
            item("Host certificates", "workspace_premium", "agents_app.hostcertificate"),
        ],
    },
    {
        "title": "Accounts",
        "separator": True,
        "items": [
            item("Accounts", "apartment", "templates_app.account"),
            item("Users", "person", "auth.user"),
            item("Groups", "group", "auth.group"),
        ],
    },
    {
        "title": "System",
        "separator": True,
        "collapsible": True,
        "items": [
            item("Events", "history", "templates_app.event"),
            item("Task results", "task_alt", "django_celery_results.taskresult"),
            item("Group results", "checklist", "django_celery_results.groupresult"),
            item("Periodic tasks", "schedule", "django_celery_beat.periodictask"),
            item("Intervals", "timer", "django_celery_beat.intervalschedule"),
            item("Crontabs", "event_repeat", "django_celery_beat.crontabschedule"),
            item("Clocked", "alarm", "django_celery_beat.clockedschedule"),
            item("Solar events", "wb_sunny", "django_celery_beat.solarschedule"),
            item("API tokens", "key", "authtoken.tokenproxy"),
            item("CloudStack API keys", "vpn_key", "templates_app.apikey"),
            item("CloudStack async jobs", "pending_actions", "templates_app.asyncjob"),
        ],
    },
]

UNFOLD = {
    "SITE_TITLE": "Stencil",
    "SITE_HEADER": "Stencil",
    "SITE_SUBHEADER": "Templates for KVM clouds",
    "SITE_SYMBOL": "layers",
    "SITE_URL": "/",
    "SHOW_HISTORY": True,
    # The admin index is the operators' dashboard (agents_app/dashboard.py).
    "DASHBOARD_CALLBACK": "agents_app.dashboard.dashboard_callback",
    "SHOW_VIEW_ON_SITE": False,
    # Served by WhiteNoise like the theme's own files: nothing comes from a CDN.
    "STYLES": [lambda request: static("stencil/console.css")],
    "SIDEBAR": {
        "show_search": True,
        "show_all_applications": True,
        "navigation": NAVIGATION,
    },
}

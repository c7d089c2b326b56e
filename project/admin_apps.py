"""The admin app, with its modules loaded by the URLconf instead of at start-up.

Django's default admin config imports every app's `admin.py` in `ready()`, in every process.
Celery workers and KVM agents never serve a page, and those modules (the theme's mixins, the
object actions, the forms) were a fifth of their resident memory (docs/benchmarks.md, "Store
download"). Here `project/urls.py` runs the autodiscovery, so only processes that serve
requests load them; the admin's own system checks discover first, so `manage.py check` sees
every registered admin whatever order the checks run in.
"""

from django.contrib.admin import autodiscover
from django.contrib.admin.apps import SimpleAdminConfig
from django.contrib.admin.checks import check_admin_app, check_dependencies
from django.core import checks


def check_admin_after_discovery(app_configs, **kwargs):
    autodiscover()
    return check_admin_app(app_configs, **kwargs)


class ConsoleAdminConfig(SimpleAdminConfig):
    def ready(self) -> None:
        # SimpleAdminConfig.ready() would register check_admin_app, which may run before
        # anything is registered; this check discovers first.
        checks.register(check_dependencies, checks.Tags.admin)
        checks.register(check_admin_after_discovery, checks.Tags.admin)

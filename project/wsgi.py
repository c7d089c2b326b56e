"""WSGI entry point (gunicorn project.wsgi)."""

import os
from importlib import import_module

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
application = get_wsgi_application()

# The URLconf (and with it the admin modules, project/admin_apps.py) loads as the worker
# starts, not during its first request.
import_module(settings.ROOT_URLCONF)

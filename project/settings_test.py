"""Settings of the test suite (pyproject's pytest configuration names this module): Stencil in
STENCIL_ENV=test, which may run with the development SECRET_KEY over plain HTTP.

The variable is put in the environment, so the processes the tests start (Celery workers,
agents, `manage.py` commands) inherit it along with DJANGO_SETTINGS_MODULE."""

import os

os.environ["STENCIL_ENV"] = "test"  # whatever the shell says: tests are never production

from .settings import *  # noqa: E402, F403

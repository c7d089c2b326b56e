"""Workers and agents never load the admin's modules; web processes and `manage.py check` do
(project/admin_apps.py). The admin modules were a fifth of a worker's resident memory."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ADMIN_MODULES = ("templates_app.admin", "versions_app.admin", "agents_app.admin", "unfold.admin")


def python(code: str) -> str:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", "STENCIL_ENV": "test"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_worker_process_loads_no_admin_module():
    # What a Celery worker and `run_agent` do: set Django up and import every task module.
    out = python(
        "import sys, django; django.setup(); from project.celery import app;"
        "app.loader.import_default_modules(); import agents_app.agent.tasks;"
        "assert 'agents_app.tasks' in sys.modules;"
        f"print(sorted(m for m in {ADMIN_MODULES!r} if m in sys.modules))"
    )
    assert out.strip() == "[]"


def test_the_web_entry_point_registers_every_admin_before_its_first_request():
    out = python(
        "import project.wsgi; from django.contrib import admin;"
        "from templates_app.models import Template; from agents_app.models import Host;"
        "from versions_app.models import Channel;"
        "print(all(admin.site.is_registered(m) for m in (Template, Host, Channel)))"
    )
    assert out.strip() == "True"


def test_manage_check_runs_the_admin_checks_on_every_registered_admin():
    # A broken ModelAdmin registered by an app's admin.py must still fail `check`, whatever
    # order the checks run in: the admin check discovers the modules first.
    out = python(
        "import django; django.setup();"
        "from project.admin_apps import check_admin_after_discovery;"
        "from django.contrib import admin; from templates_app.models import Template;"
        "errors = check_admin_after_discovery(None);"
        "model_admin = admin.site._registry[Template];"
        "model_admin.list_display = ('no_such_field',);"
        "print(len(errors), [e.id for e in check_admin_after_discovery(None)])"
    )
    assert out.strip() == "0 ['admin.E108']"

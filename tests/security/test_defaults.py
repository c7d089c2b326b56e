"""Production by default: outside `make run` and the tests, Stencil refuses to start with the
development SECRET_KEY; `check --deploy` is clean with the production environment that
docs/deployment.md documents; the upload signing key is a key of its own."""

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
DEV_KEY = settings.DEVELOPMENT_SECRET_KEY


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without Stencil's and Django's settings (the test run's
    STENCIL_ENV=test included): what a fresh production shell has."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STENCIL_", "DJANGO_", "SECRET_KEY", "SECURE_", "ALLOWED_HOSTS"))
        and k not in ("DEBUG", "CSRF_TRUSTED_ORIGINS", "SESSION_COOKIE_SECURE")
    }
    env["DJANGO_SETTINGS_MODULE"] = "project.settings"
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def documented_production_env() -> dict[str, str]:
    """The `# stencil production environment` block of docs/deployment.md, with a real key."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    block = re.search(r"```sh\n# stencil production environment\n(.*?)```", text, re.S).group(1)
    pairs = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
    assert pairs["SECRET_KEY"].startswith("<"), "the doc shows a placeholder, not a key"
    pairs["SECRET_KEY"] = secrets.token_urlsafe(50)
    return pairs


@pytest.mark.parametrize(
    ("secret_key", "process"),
    [
        (None, ["manage.py", "check"]),
        ("", ["manage.py", "check"]),
        (DEV_KEY, ["manage.py", "check"]),
        (DEV_KEY, ["-c", "import project.wsgi"]),  # what gunicorn loads
        (DEV_KEY, ["-m", "celery", "-A", "project", "report"]),  # workers, beat
    ],
    ids=["unset", "empty", "development key", "wsgi", "celery"],
)
def test_production_refuses_to_start_without_a_secret_key_of_its_own(secret_key, process):
    extra = {} if secret_key is None else {"SECRET_KEY": secret_key}
    done = run(process, clean_env(**extra))
    assert done.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY is not set (or is the development key)" in (
        done.stderr
    ), done.stderr


def test_makemigrations_check_needs_no_production_key():
    """It reads models and migrations only: CI runs it on a clean machine, with no key set."""
    done = run(["manage.py", "makemigrations", "--check", "--dry-run"], clean_env())
    assert done.returncode == 0, done.stderr
    assert "No changes detected" in done.stdout


def test_make_run_accepts_the_development_key():
    """`make run` exports STENCIL_ENV=development (the test suite itself runs as `test`)."""
    assert "export STENCIL_ENV=development" in (ROOT / "scripts" / "run.sh").read_text()
    done = run(["-c", "import project.wsgi"], clean_env(STENCIL_ENV="development"))
    assert done.returncode == 0, done.stderr


def test_an_unknown_stencil_env_is_refused():
    done = run(["manage.py", "check"], clean_env(STENCIL_ENV="staging", SECRET_KEY="x" * 60))
    assert done.returncode != 0
    assert "STENCIL_ENV must be one of production, development, test, not 'staging'" in done.stderr


def test_check_deploy_is_clean_with_the_documented_production_settings():
    done = run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        clean_env(**documented_production_env()),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout
    assert "WARNING" not in done.stdout + done.stderr


def test_check_deploy_names_what_a_bare_production_env_leaves_insecure():
    """Without the documented HSTS and public-URL settings the check says so."""
    env = clean_env(SECRET_KEY=secrets.token_urlsafe(50))
    done = run(["manage.py", "check", "--deploy"], env)
    out = done.stdout + done.stderr
    for warning in ("security.W005", "security.W021", "stencil.W001"):
        assert warning in out
    # What production turns on by itself is not among the warnings.
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning not in out


def settings_value(name: str, **env: str) -> str:
    done = run(
        [
            "-c",
            f"import django; django.setup(); from django.conf import settings; "
            f"print(settings.{name})",
        ],
        clean_env(**env),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_upload_signing_key_is_its_own_setting():
    from project.settings import derived_key

    info = b"stencil upload signing key v1"
    key_a, key_b = secrets.token_urlsafe(50), secrets.token_urlsafe(50)
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info)
    assert derived_key(key_a, info) == expected.derive(key_a.encode()).hex()
    assert derived_key(key_b, info) != derived_key(key_a, info)
    assert derived_key(key_a, b"another purpose") != derived_key(key_a, info)
    # Unset, the key is derived: distinct from SECRET_KEY, which signs nothing of the uploads.
    assert derived_key(settings.SECRET_KEY, info) == settings.STENCIL_UPLOAD_SIGNING_KEY
    assert settings.SECRET_KEY not in settings.STENCIL_UPLOAD_SIGNING_KEY
    own = secrets.token_urlsafe(32)
    for name in ("STENCIL_UPLOAD_SIGNING_KEY", "STENCIL_UPLOAD_SECRET"):  # the former name too
        env = {"SECRET_KEY": key_a, name: own}
        assert settings_value("STENCIL_UPLOAD_SIGNING_KEY", **env) == own

"""Stencil settings. Everything an operator may change comes from environment variables (README)."""

import os
import sys
from pathlib import Path

import dj_database_url
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


DATA_DIR = Path(os.environ.get("STENCIL_DATA_DIR", BASE_DIR / "var")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

# Production by default (docs/deployment.md): only `make run` (development) and the test suite
# (project/settings_test.py: test) may run with the development SECRET_KEY and plain HTTP.
STENCIL_ENVIRONMENTS = ("production", "development", "test")
STENCIL_ENV = os.environ.get("STENCIL_ENV", "").strip().lower() or "production"
if STENCIL_ENV not in STENCIL_ENVIRONMENTS:
    raise ImproperlyConfigured(
        f"STENCIL_ENV must be one of {', '.join(STENCIL_ENVIRONMENTS)}, not {STENCIL_ENV!r}"
    )
PRODUCTION = STENCIL_ENV == "production"
DEVELOPMENT_SECRET_KEY = "stencil-dev-only-insecure-key-set-SECRET_KEY-in-production"
SECRET_KEY = os.environ.get("SECRET_KEY", "").strip()
# Commands that only read the code (its models and migrations) sign nothing and serve nothing:
# they run anywhere, as CI's `makemigrations --check` does, without a production key.
CODE_ONLY_COMMANDS = {"makemigrations", "showmigrations", "sqlmigrate", "help"}
RUNS_CODE_ONLY = (
    len(sys.argv) > 1 and sys.argv[0].endswith("manage.py") and (sys.argv[1] in CODE_ONLY_COMMANDS)
)
if PRODUCTION and SECRET_KEY in ("", DEVELOPMENT_SECRET_KEY) and not RUNS_CODE_ONLY:
    raise ImproperlyConfigured(
        "SECRET_KEY is not set (or is the development key): production (STENCIL_ENV=production, "
        "the default) needs a long random SECRET_KEY in the environment, see "
        "docs/deployment.md; `make run` sets STENCIL_ENV=development"
    )
SECRET_KEY = SECRET_KEY or DEVELOPMENT_SECRET_KEY
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = [h for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

# HTTPS only in production (each can be turned off for a deployment that must, docs/deployment.md).
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", PRODUCTION)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", PRODUCTION)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", PRODUCTION)
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "31536000" if PRODUCTION else "0"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# Behind a proxy that terminates TLS: the proxy must set X-Forwarded-Proto (and strip the
# client's), or every request looks like plain HTTP and is redirected forever.
if env_bool("STENCIL_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

INSTALLED_APPS = [
    # The admin theme (docs/architecture.md, "The console"): before django.contrib.admin so its
    # templates win and its site is the one admin.autodiscover() registers into.
    "unfold",
    # The admin; its modules are loaded by project/urls.py, not by workers (project/admin_apps.py).
    "project.admin_apps.ConsoleAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "django_celery_results",
    "templates_app",
    "versions_app",
    "agents_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files (the theme's CSS, JS and fonts) from the app server itself, under gunicorn too.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # Project templates first: the dashboard (admin/index.html) and small theme overrides.
        "DIRS": [BASE_DIR / "project" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{DATA_DIR / 'stencil.sqlite3'}"),
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "0")),
        # A kept connection is checked before a request reuses it: a database restart costs
        # one reconnect, not an error.
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # The listing's visibility subqueries push plan costs over jit_above_cost; compiling took
    # most of each request's time (docs/benchmarks.md).
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("options", "-c jit=off")
# The template listing's statements are prepared on PostgreSQL, once per connection and with
# a generic plan: planning its statement cost more than running it (docs/benchmarks.md). Only
# statements run through templates_app.statements are prepared; the rest of Django binds its
# parameters on the client as usual. Off behind a connection pooler that does not keep
# prepared statements (PgBouncer before 1.21 in transaction mode).
STENCIL_PREPARED_STATEMENTS = os.environ.get("STENCIL_PREPARED_STATEMENTS", "on") != "off"
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and (
    STENCIL_PREPARED_STATEMENTS
):
    options = DATABASES["default"].setdefault("OPTIONS", {})
    # psycopg prepares nothing with a threshold of None (Django's default), not even on
    # request; this one is never reached by repetition alone.
    options.setdefault("prepare_threshold", 2**31 - 1)
    options["options"] += " -c plan_cache_mode=force_generic_plan"
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker, beat and agent share one SQLite file in the zero-setup run. WAL lets readers
    # run beside the one writer; IMMEDIATE takes the write lock when a transaction begins, so a
    # reader never has to upgrade its lock mid-transaction (which SQLite answers with "database
    # is locked" at once, whatever the timeout); the busy timeout makes writers queue.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": (
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;"
            ),
        }
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# Times with seconds in the console (project/formats/en/formats.py).
FORMAT_MODULE_PATH = ["project.formats"]

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
# WhiteNoise finds files through the staticfiles finders, so a checkout serves the packages'
# assets without `collectstatic`; a deployment may still collect them into STATIC_ROOT.
WHITENOISE_USE_FINDERS = True

LOGIN_URL = "admin:login"

# The operator console: django-unfold's branding and sidebar (project/console.py).
from project.console import UNFOLD  # noqa: E402, F401

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": [
        "templates_app.api.filter_backends.FilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "templates_app.api.pagination.StencilPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "templates_app.api.schema.StencilAutoSchema",
    "EXCEPTION_HANDLER": "templates_app.api.errors.stencil_exception_handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Stencil API",
    "DESCRIPTION": "Template service for KVM clouds: templates, ISOs, their copies and references.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Two models have a `state` with other choices: named here, or spectacular makes up hashed
    # names and warns (and `check --deploy` runs its checks).
    "ENUM_NAME_OVERRIDES": {
        "TemplateStateEnum": "templates_app.choices.TemplateState",
        "StoreCopyStateEnum": "templates_app.choices.StoreRefState",
    },
}

# Celery: the zero-setup default is a broker that needs no server (a folder under var/).
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_FOLDER = DATA_DIR / "broker"
if CELERY_BROKER_URL.startswith("filesystem://"):
    for folder in ("queue", "processed", "control"):
        (CELERY_BROKER_FOLDER / folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_FOLDER / "queue"),
        "data_folder_out": str(CELERY_BROKER_FOLDER / "queue"),
        "processed_folder": str(CELERY_BROKER_FOLDER / "processed"),
        "control_folder": str(CELERY_BROKER_FOLDER / "control"),
        "store_processed": False,
    }
# Tasks are acknowledged late (after they run). Redis hands an unacknowledged task to another
# worker once this many seconds pass, so it must stay above the longest task (a large pool copy
# or a VM disk flattened into a store), or a task still running gets a second delivery (host
# tasks then meet the VM's host task claim and leave). The filesystem broker never redelivers
# (no visibility timeout); RabbitMQ redelivers only when the consumer's connection drops (its
# own consumer_timeout, 30 min by default, must also exceed the longest task).
STENCIL_BROKER_VISIBILITY_TIMEOUT = int(os.environ.get("STENCIL_BROKER_VISIBILITY_TIMEOUT", "7200"))
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": STENCIL_BROKER_VISIBILITY_TIMEOUT}
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", "django-db")
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "celery")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# Template life cycle.
STENCIL_GC_INTERVAL_SECONDS = int(os.environ.get("STENCIL_GC_INTERVAL_SECONDS", "300"))
STENCIL_GC_BATCH_SIZE = int(os.environ.get("STENCIL_GC_BATCH_SIZE", "1000"))
# The template listing counts exactly up to this many rows (a COUNT over a LIMIT: ~1 ms at
# 1000); beyond, the planner's estimate with count_is_estimate true (docs/api.md).
STENCIL_LISTING_EXACT_COUNT_LIMIT = int(os.environ.get("STENCIL_LISTING_EXACT_COUNT_LIMIT", "1000"))
# Delayed delete: an unreferenced INACTIVE template is removed only this long after its delete,
# so a mistaken delete can be reactivated; 0 removes it at the next sweep (at once).
STENCIL_GC_GRACE_SECONDS = int(os.environ.get("STENCIL_GC_GRACE_SECONDS", "3600"))
STENCIL_IMAGE_STORE_ROOT = Path(
    os.environ.get("STENCIL_IMAGE_STORE_ROOT", DATA_DIR / "image-stores")
).resolve()

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# Downloads to image stores (storage worker).
STENCIL_DOWNLOAD_CONNECT_TIMEOUT = float(os.environ.get("STENCIL_DOWNLOAD_CONNECT_TIMEOUT", "10"))
STENCIL_DOWNLOAD_READ_TIMEOUT = float(os.environ.get("STENCIL_DOWNLOAD_READ_TIMEOUT", "30"))
STENCIL_DOWNLOAD_STALL_TIMEOUT = float(os.environ.get("STENCIL_DOWNLOAD_STALL_TIMEOUT", "60"))
STENCIL_DOWNLOAD_MAX_ATTEMPTS = int(os.environ.get("STENCIL_DOWNLOAD_MAX_ATTEMPTS", "4"))
STENCIL_DOWNLOAD_BACKOFF_BASE = float(os.environ.get("STENCIL_DOWNLOAD_BACKOFF_BASE", "0.5"))
# A store copy's download lease: a killed worker's copy is taken over this long after its last
# renewal (progress renews it about once a second).
STENCIL_STORE_COPY_LEASE_SECONDS = int(os.environ.get("STENCIL_STORE_COPY_LEASE_SECONDS", "120"))
STENCIL_STORAGE_QUEUE = os.environ.get("STENCIL_STORAGE_QUEUE", "storage")
CELERY_TASK_ROUTES = {
    "templates_app.tasks.store_copy_download_task": {"queue": STENCIL_STORAGE_QUEUE},
    "templates_app.tasks.template_sync_task": {"queue": STENCIL_STORAGE_QUEUE},
    "templates_app.tasks.image_store_fill_task": {"queue": STENCIL_STORAGE_QUEUE},
}
# A copy (store or pool) in progress whose lease ran out, or that made no progress for this long,
# is listed as stuck (`?status=stuck`, the admin's "Stuck" filter).
STENCIL_COPY_STUCK_AFTER_SECONDS = int(os.environ.get("STENCIL_COPY_STUCK_AFTER_SECONDS", "900"))
STENCIL_SYNC_PRUNE_GRACE_SECONDS = int(os.environ.get("STENCIL_SYNC_PRUNE_GRACE_SECONDS", "86400"))
# The reaper (beat, docs/operations.md): every in-progress state has an owner and a deadline.
STENCIL_REAPER_INTERVAL_SECONDS = int(os.environ.get("STENCIL_REAPER_INTERVAL_SECONDS", "60"))
# A store copy whose worker died is re-queued until this many attempts, then DOWNLOAD_ERROR.
STENCIL_STORE_COPY_MAX_ATTEMPTS = int(os.environ.get("STENCIL_STORE_COPY_MAX_ATTEMPTS", "3"))


def derived_key(secret_key: str, purpose: bytes) -> str:
    """A key of its own for one purpose, derived from SECRET_KEY (HKDF-SHA256, `purpose` as the
    info string): knowing one derived key tells nothing about SECRET_KEY or another one."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose)
    return hkdf.derive(secret_key.encode()).hex()


# Signed uploads: the pre-shared key that signs upload URLs (HMAC-SHA256), and how long they stay
# valid. Its own setting, so that it can be given to an upload front end without SECRET_KEY;
# STENCIL_UPLOAD_SECRET is its former name, still read.
STENCIL_UPLOAD_SIGNING_KEY = (
    os.environ.get("STENCIL_UPLOAD_SIGNING_KEY", "").strip()
    or os.environ.get("STENCIL_UPLOAD_SECRET", "").strip()
    or derived_key(SECRET_KEY, b"stencil upload signing key v1")
)
# The CloudStack facade keeps API secret keys encrypted with this (any string; changing it
# voids every key pair).
STENCIL_API_KEY_ENCRYPTION_KEY = os.environ.get(
    "STENCIL_API_KEY_ENCRYPTION_KEY", SECRET_KEY + ":api-keys"
)
# Largest virtual size a template's image may have (bytes; default 2 TiB).
STENCIL_MAX_VIRTUAL_SIZE = int(os.environ.get("STENCIL_MAX_VIRTUAL_SIZE", str(2 << 40)))
# How long a signed extract (download) URL stays valid.
STENCIL_EXTRACT_EXPIRY_SECONDS = int(os.environ.get("STENCIL_EXTRACT_EXPIRY_SECONDS", "3600"))
STENCIL_UPLOAD_EXPIRY_SECONDS = int(os.environ.get("STENCIL_UPLOAD_EXPIRY_SECONDS", "3600"))

# Outbound URLs: rules for every URL the storage worker and the agents fetch (first request,
# redirects, mirrors); see templates_app/images/urlsafety.py. Deny by default: loopback,
# link-local and metadata, broadcast, multicast, the private ranges and the IPv6 ranges that
# carry an IPv4 address. An internal mirror is let through with STENCIL_URL_ALLOWED_NETWORKS. An
# unset or empty variable keeps the default, so a blank value in a deployment file cannot switch
# the protection off.
STENCIL_URL_DENIED_NETWORKS = [
    n.strip()
    for n in (
        os.environ.get("STENCIL_URL_DENIED_NETWORKS", "").strip()
        or "127.0.0.0/8,::1/128,169.254.0.0/16,fe80::/10,0.0.0.0/8,255.255.255.255/32,"
        "224.0.0.0/4,ff00::/8,100.100.100.200/32,fd00:ec2::254/128,"
        "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7,"
        "::/96,::ffff:0:0/96,64:ff9b::/96,64:ff9b:1::/48,2002::/16,2001::/32"
    ).split(",")
    if n.strip()
]
# CIDRs let through although a wider denied network holds them, e.g. "10.20.0.0/16" for a mirror.
STENCIL_URL_ALLOWED_NETWORKS = [
    n.strip() for n in os.environ.get("STENCIL_URL_ALLOWED_NETWORKS", "").split(",") if n.strip()
]
# Ports besides 80 and 443 (always allowed): "8080,9000-9100".
STENCIL_URL_ALLOWED_PORTS = [
    p.strip() for p in os.environ.get("STENCIL_URL_ALLOWED_PORTS", "").split(",") if p.strip()
]
STENCIL_URL_ALLOW_LOOPBACK = env_bool("STENCIL_URL_ALLOW_LOOPBACK", False)
STENCIL_PUBLIC_URL = os.environ.get("STENCIL_PUBLIC_URL", "http://127.0.0.1:8000")

# KVM agents: heartbeat period, and how long without one before beat marks a host Down.
STENCIL_HEARTBEAT_SECONDS = int(os.environ.get("STENCIL_HEARTBEAT_SECONDS", "20"))
STENCIL_HOST_DOWN_AFTER_SECONDS = int(os.environ.get("STENCIL_HOST_DOWN_AFTER_SECONDS", "90"))
STENCIL_POOL_COPY_LEASE_SECONDS = int(os.environ.get("STENCIL_POOL_COPY_LEASE_SECONDS", "60"))
# CloudStack's template.delete.from.primary.storage: a removed template's unused pool copies are
# deleted when the sweep removes it (false: left to the eviction runs).
STENCIL_DELETE_FROM_PRIMARY_STORAGE = env_bool("STENCIL_DELETE_FROM_PRIMARY_STORAGE", True)
STENCIL_POOL_COPY_MIN_AGE_SECONDS = int(os.environ.get("STENCIL_POOL_COPY_MIN_AGE_SECONDS", "3600"))
# A host task's claim on its VM (renewed every third of it while the task runs): a duplicate
# delivery meeting a live claim leaves; one that finds it run out (the holder died) takes over.
STENCIL_HOST_TASK_CLAIM_SECONDS = int(os.environ.get("STENCIL_HOST_TASK_CLAIM_SECONDS", "60"))
# Threads of an agent's Celery worker (manage.py run_agent; --concurrency overrides it): how
# many host tasks (deploys, copies, syncs) one host runs at once. Deploys mostly wait on
# libvirt, qemu-img and PostgreSQL, so more threads than cores pay off.
STENCIL_AGENT_CONCURRENCY = int(os.environ.get("STENCIL_AGENT_CONCURRENCY", "8"))
# The heartbeat's VM reconcile leaves alone a VM changed this recently (its host task may still
# be queued), and a VM whose host task claim is live.
STENCIL_VM_RECONCILE_GRACE_SECONDS = int(
    os.environ.get("STENCIL_VM_RECONCILE_GRACE_SECONDS", "120")
)
# A deploy or rebuild with no result from its host after this long: the reaper ends it in ERROR.
STENCIL_VM_TRANSITION_DEADLINE_SECONDS = int(
    os.environ.get("STENCIL_VM_TRANSITION_DEADLINE_SECONDS", "900")
)
# A certificate install/removal a host has not reported after this long is re-queued once, then
# FAILED (the host's agent sync retries FAILED rows when it next starts).
STENCIL_CERTIFICATE_DEADLINE_SECONDS = int(
    os.environ.get("STENCIL_CERTIFICATE_DEADLINE_SECONDS", "600")
)

# Direct-download certificates: each agent keeps the certificates its HTTPS downloads trust in
# STENCIL_AGENT_TRUST_ROOT/<host name>/ (<alias>.pem plus OpenSSL subject-hash links).
STENCIL_AGENT_TRUST_ROOT = Path(
    os.environ.get("STENCIL_AGENT_TRUST_ROOT", DATA_DIR / "trust")
).resolve()

# Direct-download registration: how long the API waits for a host's URL check / full verify.
STENCIL_URL_CHECK_TIMEOUT = float(os.environ.get("STENCIL_URL_CHECK_TIMEOUT", "20"))
STENCIL_URL_VERIFY_TIMEOUT = float(os.environ.get("STENCIL_URL_VERIFY_TIMEOUT", "600"))
# Registration of direct-download templates asks a host of the zone to check the URL first.
STENCIL_DIRECT_DOWNLOAD_URL_CHECK = env_bool("STENCIL_DIRECT_DOWNLOAD_URL_CHECK", True)

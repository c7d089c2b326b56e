#!/usr/bin/env bash
# `make run`: migrate, create the demo (idempotent), then web + worker + beat under honcho.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python manage.py migrate --noinput
.venv/bin/python manage.py createdemo --base-url "http://127.0.0.1:${STENCIL_PORT:-8000}"
echo "Starting web, worker and beat; Ctrl-C stops everything."
exec .venv/bin/honcho start -f Procfile

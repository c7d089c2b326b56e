#!/usr/bin/env bash
# `make run`: migrate, create the demo (idempotent), then web + worker + beat + the agent of the
# demo KVM host `demo-kvm` (libvirt test driver, node XML under the data dir) under honcho.
set -euo pipefail
cd "$(dirname "$0")/.."
# The zero-setup demo is development: the development SECRET_KEY and plain HTTP are allowed
# (docs/deployment.md). Every process below, honcho's included, inherits it.
export STENCIL_ENV=development
.venv/bin/python manage.py migrate --noinput
.venv/bin/python manage.py createdemo --base-url "http://127.0.0.1:${STENCIL_PORT:-8000}"
# The agent's libvirt URI, computed as settings (DATA_DIR) and createdemo (write_test_node_xml)
# do: test:// + the quoted absolute path of <data dir>/libvirt/demo-node.xml. The Procfile uses it.
STENCIL_DEMO_LIBVIRT_URI="$(.venv/bin/python -c '
import os, urllib.parse
from pathlib import Path
data_dir = Path(os.environ.get("STENCIL_DATA_DIR", "var")).resolve()
print("test://" + urllib.parse.quote(str(data_dir / "libvirt" / "demo-node.xml"), safe="/"))
')"
export STENCIL_DEMO_LIBVIRT_URI
echo "Starting web, worker, beat and the agent of host demo-kvm; Ctrl-C stops everything."
exec .venv/bin/honcho start -f Procfile

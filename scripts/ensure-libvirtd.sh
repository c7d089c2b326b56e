#!/usr/bin/env bash
# Make sure a real libvirtd answers on qemu:///system, for the tests that run on both libvirt
# backends (the in-process test driver and the daemon). Idempotent: when the daemon already
# answers with our configuration this returns at once. Fails loudly otherwise: those tests never
# skip. Waits are bounded.
set -euo pipefail

URI="qemu:///system"
PIDFILE=/run/stencil-libvirtd.pid
LOG=/var/log/stencil-libvirtd.log
QEMU_CONF=/etc/libvirt/qemu.conf
# The first qemu capability probe takes 4-8 s; 30 s leaves room on a loaded CI machine.
WAIT_SECONDS=${LIBVIRTD_WAIT_SECONDS:-30}

# What qemu.conf must say:
# - user/group root: without them every defineXML waits ~36 s on ownership changes that cannot
#   succeed here, and the pools live under directories only root can read (pytest's tmp_path);
# - stdio_handler file: qemu's output goes straight to a file, so domains start without
#   virtlogd, one daemon fewer to run on a machine without systemd.
SETTINGS=('user = "root"' 'group = "root"' 'stdio_handler = "file"')

answers() { timeout 10 virsh -c "$URI" list >/dev/null 2>&1; }

conf_complete() {
  local line
  for line in "${SETTINGS[@]}"; do
    grep -qxF "$line" "$QEMU_CONF" 2>/dev/null || return 1
  done
}

our_daemon_pid() {
  local pid
  [ -s "$PIDFILE" ] || return 1
  pid="$(cat "$PIDFILE")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

if command -v virsh >/dev/null && conf_complete && answers; then
  echo "libvirtd answers on $URI."
  exit 0
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# libvirt-daemon without the -system package: no systemd units, no polkit, no default network,
# none of which this machine needs. qemu-system-x86 runs the domains (TCG: no KVM needed);
# libvirt-dev and pkg-config build libvirt-python.
bash "$here/apt-install.sh" libvirt-daemon libvirt-clients qemu-system-x86 qemu-utils \
  libvirt-dev pkg-config

# The daemon exits at start-up when its qemu driver cannot find this user and group.
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null ||
  useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu

changed=""
mkdir -p "$(dirname "$QEMU_CONF")"
touch "$QEMU_CONF"
for line in "${SETTINGS[@]}"; do
  if ! grep -qxF "$line" "$QEMU_CONF"; then
    echo "$line" >>"$QEMU_CONF"
    changed=yes
  fi
done

# libvirtd reads qemu.conf at start only: a daemon of ours started before the change must go.
if pid="$(our_daemon_pid)" && [ -n "$changed" ]; then
  echo "qemu.conf changed; restarting libvirtd (pid $pid)"
  kill "$pid"
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "ERROR: libvirtd (pid $pid) did not stop within 10 s" >&2
    exit 1
  fi
fi

# Start the daemon unless ours is already running (it may still be probing capabilities).
if ! our_daemon_pid >/dev/null; then
  if answers; then
    # Someone else's daemon (systemd's, say) answers: we cannot vouch for its qemu.conf.
    echo "WARNING: a libvirtd not started by this script answers on $URI;" \
      "make sure it was started after $QEMU_CONF was completed" >&2
    exit 0
  fi
  # A pid file left by a daemon that died would make the check below fail at once.
  rm -f "$PIDFILE"
  echo "starting libvirtd (log: $LOG)"
  mkdir -p "$(dirname "$LOG")"
  setsid nohup libvirtd --pid-file="$PIDFILE" >>"$LOG" 2>&1 </dev/null &
fi

deadline=$((SECONDS + WAIT_SECONDS))
until answers; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "ERROR: libvirtd does not answer on $URI after ${WAIT_SECONDS} s; see $LOG" >&2
    tail -n 20 "$LOG" >&2 2>/dev/null || true
    exit 1
  fi
  if [ -s "$PIDFILE" ] && ! our_daemon_pid >/dev/null; then
    echo "ERROR: libvirtd exited at start-up; see $LOG" >&2
    tail -n 20 "$LOG" >&2 2>/dev/null || true
    exit 1
  fi
  sleep 0.5
done
echo "libvirtd answers on $URI."

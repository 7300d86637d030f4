#!/usr/bin/env bash
# The Debian package on this machine (make package-test, after make package): lintian, install,
# the system user, the conffile and the units, the unit's ExecStart run as its user (no systemd
# here: its command line, user and working directory, with a notify socket), pusher-js against it,
# ExecReload after editing the conffile (a new app works, no connection dropped), a graceful stop,
# and a purge that leaves nothing behind. Needs root.
#
#   tests/package/run.sh [DIR holding soketify_*.deb and its .changes]   (default: dist/deb)
#
# SOKETIFY_PACKAGE_TEST_PORT: the port the daemon serves on (default 6091).
# SOKETIFY_PACKAGE_TEST_KEEP=1: leave the package installed when a step fails.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DEB_DIR=$(cd "${1:-$ROOT/dist/deb}" && pwd)
PORT=${SOKETIFY_PACKAGE_TEST_PORT:-6091}
WORK=$(mktemp -d /tmp/soketify-package-test.XXXXXX)
CONFFILE=/etc/soketify/soketify.toml
STARTED=$SECONDS
DAEMON_PID=
NOTIFY_PID=
PASSED=

step() { printf '\n== %s\n' "$*"; }
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

cleanup() {
    local status=$?
    [ -n "$DAEMON_PID" ] && kill -KILL "$DAEMON_PID" 2>/dev/null || true
    [ -n "$NOTIFY_PID" ] && kill "$NOTIFY_PID" 2>/dev/null || true
    if [ -z "$PASSED" ]; then
        if [ -s "$WORK/daemon.log" ]; then
            echo "--- last lines of the daemon's output:" >&2
            tail -n 40 "$WORK/daemon.log" >&2
        fi
        if [ "${SOKETIFY_PACKAGE_TEST_KEEP:-}" != 1 ] && dpkg-query -W soketify >/dev/null 2>&1; then
            echo "--- purging the package (SOKETIFY_PACKAGE_TEST_KEEP=1 keeps it)" >&2
            DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq soketify >/dev/null 2>&1 || true
        fi
    fi
    rm -rf "$WORK"
    exit $status
}
trap cleanup EXIT

# Everything on this machine with "soketify" in its name, outside the source tree and scratch
# space, and the user and group: the same before the installation and after the purge.
traces() {
    find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \
        -o -path /var/tmp -o -path /work -o -path "$ROOT" -o -path /root \) -prune \
        -o -name '*soketify*' -print 2>/dev/null | sort
    getent passwd soketify || true
    getent group soketify || true
    grep -s soketify /var/lib/dpkg/statoverride || true
}

# A systemd setting of an installed unit file (the last one given).
unit_setting() { sed -n "s/^$2=//p" "$1" | tail -n 1; }

[ "$(id -u)" = 0 ] || fail "run as root: the test installs and purges a package"
shopt -s nullglob
debs=("$DEB_DIR"/soketify_*.deb)
changes=("$DEB_DIR"/soketify_*.changes)
[ ${#debs[@]} = 1 ] && [ ${#changes[@]} = 1 ] || fail "expected one soketify .deb and .changes in $DEB_DIR (make package)"
DEB=${debs[0]}

step "lintian $(basename "${changes[0]}"): no errors, no warnings"
# Not as root (lintian warns about that); the files are world-readable.
chmod -R a+rX "$WORK" && cp "$DEB_DIR"/soketify_* "$WORK"/
lintian_output=$(setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME="$WORK" \
    lintian --fail-on error,warning "$WORK/$(basename "${changes[0]}")" 2>&1) || \
    fail "lintian: $lintian_output"
[ -z "$lintian_output" ] || fail "lintian said: $lintian_output"
echo "lintian: no output"

step "install $(basename "$DEB")"
if dpkg-query -W -f='${db:Status-Status}' soketify 2>/dev/null | grep -qv not-installed; then
    echo "a previous run left soketify installed: purging it first"
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq soketify >/dev/null
fi
traces > "$WORK/traces-before"
if ss -Htln "sport = :$PORT" | grep -q .; then fail "port $PORT is in use"; fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$DEB" > "$WORK/apt.log" 2>&1 || \
    { cat "$WORK/apt.log"; fail "apt-get install"; }
[ "$(dpkg-query -W -f='${db:Status-Status}' soketify)" = installed ] || fail "not installed"

step "the system user"
IFS=: read -r _ _ uid gid _ home shell <<< "$(getent passwd soketify)" || fail "no user soketify"
[ "$uid" -lt 1000 ] || fail "soketify is not a system user (uid $uid)"
[ "$(getent group soketify | cut -d: -f3)" = "$gid" ] || fail "its primary group is not soketify"
[ "$home" = /var/lib/soketify ] || fail "its home is $home"
[ "$shell" = /usr/sbin/nologin ] || fail "its shell is $shell"
[ "$(stat -c '%U:%G %a' /var/lib/soketify)" = "soketify:soketify 750" ] || \
    fail "/var/lib/soketify: $(stat -c '%U:%G %a' /var/lib/soketify)"
echo "soketify: uid $uid, group soketify, home $home, shell $shell"

step "the conffile"
dpkg-query -W -f='${Conffiles}\n' soketify | grep -q "^ $CONFFILE " || fail "$CONFFILE is not a conffile"
cmp "$CONFFILE" "$ROOT/etc/soketify.toml" || fail "$CONFFILE is not etc/soketify.toml"
# It holds the apps' secrets: the daemon's group may read it, others may not.
[ "$(stat -c '%U:%G %a' "$CONFFILE")" = "root:soketify 640" ] || fail "$CONFFILE: $(stat -c '%U:%G %a' "$CONFFILE")"
[ "$(stat -c '%U:%G %a' /etc/soketify)" = "root:soketify 750" ] || fail "/etc/soketify: $(stat -c '%U:%G %a' /etc/soketify)"
echo "$CONFFILE: conffile, root:soketify 640"

step "the units"
SERVICE=$(dpkg -L soketify | grep '/systemd/system/soketify.service$') || fail "no soketify.service"
SOCKET=$(dpkg -L soketify | grep '/systemd/system/soketify.socket$') || fail "no soketify.socket"
cmp "$SERVICE" "$ROOT/debian/soketify.service" && cmp "$SOCKET" "$ROOT/debian/soketify.socket" || \
    fail "the installed units are not debian/'s"
[ -L /etc/systemd/system/multi-user.target.wants/soketify.service ] || fail "soketify.service is not enabled"
[ ! -e /etc/systemd/system/sockets.target.wants/soketify.socket ] || fail "soketify.socket is enabled"
verify=$(systemd-analyze verify "$SERVICE" "$SOCKET" 2>&1) || fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify: $verify"
echo "$SERVICE (enabled), $SOCKET (disabled): systemd-analyze verify is silent"

step "the venv runs the interpreter it was built for, not whatever python3 is"
python=$(readlink -f /usr/lib/soketify/venv/bin/python)
dpkg-query -W -f='${Depends}\n' soketify | tr ',' '\n' | grep -qx " *$(basename "$python")" || \
    fail "the package does not depend on $(basename "$python") (Depends: $(dpkg-query -W -f='${Depends}' soketify))"
echo "venv python -> $python; Depends: $(basename "$python")"
# Debian moving python3 to another minor version, in a private mount namespace: /usr/bin becomes
# a copy (links to the real files) whose python3 is an interpreter that cannot run this venv.
# (A bind mount on /usr/bin/python3 itself would land on python3.11, where that link points.)
printf '#!/bin/sh\necho "python3 is now another version" >&2\nexit 3\n' > "$WORK/python3"
chmod 0755 "$WORK/python3"
mkdir "$WORK/usr-bin"
if unshare --mount true 2>/dev/null; then
    unshare --mount sh -ec 'real=$1
        mount --bind /usr/bin "$real"
        mount -t tmpfs -o mode=0755 tmpfs /usr/bin
        "$real/cp" -as "$real/." /usr/bin/
        "$real/ln" -sf "$2" /usr/bin/python3
        if /usr/bin/python3 -c pass 2>/dev/null; then echo "python3 still runs" >&2; exit 1; fi
        /usr/lib/soketify/venv/bin/twistd soketify --help >/dev/null' sh "$WORK/usr-bin" "$WORK/python3" || \
        fail "twistd soketify does not run once /usr/bin/python3 is another interpreter"
    echo "with /usr/bin/python3 replaced: twistd soketify --help works"
else
    echo "SKIP: unshare --mount is not permitted here (no python3 upgrade simulation)"
fi

step "ExecStart as user soketify, on port $PORT"
sed -i "s|^listen = \[\"tcp:6001\"\]|listen = [\"tcp:$PORT:interface=127.0.0.1\"]|" "$CONFFILE"
grep -q "tcp:$PORT:interface=127.0.0.1" "$CONFFILE" || fail "could not set the port in $CONFFILE"
exec_start=$(unit_setting "$SERVICE" ExecStart)
user=$(unit_setting "$SERVICE" User)
group=$(unit_setting "$SERVICE" Group)
workdir=$(unit_setting "$SERVICE" WorkingDirectory)
[ -n "$exec_start" ] && [ -n "$user" ] && [ -n "$workdir" ] || fail "ExecStart, User or WorkingDirectory missing"
echo "$exec_start"
# systemd's notify socket, as Type=notify has it: every datagram, one line each, in notify.log.
chmod 0755 "$WORK"
python3 -u -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
import os; os.chmod(sys.argv[1], 0o777)
print("bound", flush=True)
while True:
    print(s.recv(65536).decode().replace("\n", " "), flush=True)
' "$WORK/notify" > "$WORK/notify.log" &
NOTIFY_PID=$!
for _ in $(seq 100); do grep -q bound "$WORK/notify.log" && break; sleep 0.05; done
read -r -a command <<< "$exec_start"
(cd "$workdir" && exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 NOTIFY_SOCKET="$WORK/notify" \
    setpriv --reuid="$user" --regid="$group" --init-groups --no-new-privs "${command[@]}") \
    > "$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 300); do
    grep -q '^READY=1' "$WORK/notify.log" && break
    kill -0 "$DAEMON_PID" 2>/dev/null || fail "the daemon exited"
    sleep 0.1
done
grep -q '^READY=1' "$WORK/notify.log" || fail "no READY=1 within 30 s"
[ "$(stat -c %U "/proc/$DAEMON_PID")" = "$user" ] || fail "the daemon runs as $(stat -c %U "/proc/$DAEMON_PID")"
ready=$(curl -sS -m 5 "http://127.0.0.1:$PORT/ready") || fail "GET /ready"
echo "pid $DAEMON_PID as $user: READY=1, GET /ready: $ready"

step "pusher-js, then ExecReload after adding an app to the conffile"
reload=$(unit_setting "$SERVICE" ExecReload)
[ -n "$reload" ] || fail "the unit has no ExecReload"
node "$ROOT/tests/package/clients.mjs" --port "$PORT" --config "$CONFFILE" \
    --reload "${reload//\$MAINPID/$DAEMON_PID}" || fail "clients (above)"
kill -0 "$DAEMON_PID" 2>/dev/null || fail "the daemon is gone after the reload"
grep -q '^RELOADING=1' "$WORK/notify.log" || fail "no RELOADING=1 on the notify socket"
awk '/^RELOADING=1/ { reloading = 1 } reloading && /^READY=1/ { ready = 1 } END { exit !ready }' \
    "$WORK/notify.log" || fail "no READY=1 after RELOADING=1"
echo "notify socket: RELOADING=1, then READY=1"

step "SIGTERM: a graceful stop within TimeoutStopSec"
kill -TERM "$DAEMON_PID"
timeout=$(unit_setting "$SERVICE" TimeoutStopSec)
for _ in $(seq $((timeout * 10))); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$DAEMON_PID" 2>/dev/null && fail "still running $timeout s after SIGTERM"
status=0
wait "$DAEMON_PID" || status=$?
DAEMON_PID=
case $status in 0|143) ;; *) fail "exit status $status" ;; esac
grep -q '^STOPPING=1' "$WORK/notify.log" || fail "no STOPPING=1"
if grep -q Traceback "$WORK/daemon.log"; then fail "the daemon logged a traceback"; fi
echo "exit status $status, STOPPING=1, no traceback in its output"

step "reinstall (the upgrade path: prerm upgrade, unpack, postinst configure)"
DEBIAN_FRONTEND=noninteractive apt-get install --reinstall -y -qq "$DEB" > "$WORK/apt.log" 2>&1 || \
    { cat "$WORK/apt.log"; fail "apt-get install --reinstall"; }
grep -q 'package-test-key' "$CONFFILE" || fail "the reinstallation replaced the edited $CONFFILE"
[ "$(stat -c '%U:%G %a' "$CONFFILE")" = "root:soketify 640" ] || fail "$CONFFILE: $(stat -c '%U:%G %a' "$CONFFILE")"
if grep -i 'warning' "$WORK/apt.log"; then fail "dpkg warned (above)"; fi
echo "edited conffile kept, no warnings"

step "purge"
DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq soketify > "$WORK/apt.log" 2>&1 || \
    { cat "$WORK/apt.log"; fail "apt-get purge"; }
if grep -i 'warning' "$WORK/apt.log"; then fail "dpkg warned (above)"; fi
if dpkg-query -W -f='${db:Status-Status}' soketify 2>/dev/null | grep -qv not-installed; then
    fail "dpkg still knows soketify: $(dpkg-query -W -f='${db:Status-Status}' soketify)"
fi
for path in /usr/lib/soketify /etc/soketify /var/lib/soketify "$SERVICE" "$SOCKET"; do
    [ ! -e "$path" ] || fail "$path is left"
done
traces > "$WORK/traces-after"
diff "$WORK/traces-before" "$WORK/traces-after" || fail "the purge left the lines marked > above"
echo "nothing named soketify left, no user, no group"

PASSED=1
echo
echo "package test passed in $((SECONDS - STARTED)) s"

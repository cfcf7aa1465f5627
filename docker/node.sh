#!/bin/sh
# raftkv-node: runs and supervises one raftkv process inside a node container.
#
# The container's own process only waits (`idle`); raftkv runs beside it, started by
# `start` through `docker exec`, so it can be killed with SIGKILL, stopped with SIGSTOP and
# started again while the container, its address and its data directory live on.
#
#   raftkv-node idle                 the container's command: wait until SIGTERM
#   raftkv-node start ARGV...        start ARGV in the background, output appended to the
#                                    log; prints its pid; exit 3 if one already runs
#   raftkv-node signal SIG           send SIG (STOP, CONT, TERM...) if it runs
#   raftkv-node kill                 SIGKILL, and wait until it is gone
#   raftkv-node stop SECONDS         TERM (and CONT), then KILL after SECONDS
#   raftkv-node status               print the pid and state (R, S, T...); exit 1 if not running
#   raftkv-node install WHEELDIR     unpack every wheel of WHEELDIR into /opt/raftkv/site
set -eu

PIDFILE=/run/raftkv/pid
LOG=${RAFTKV_LOG:-/var/log/raftkv/raftkv.log}
SITE=/opt/raftkv/site

# The state letter of a live process, empty if there is none (a zombie counts as gone).
state() {
    [ -r "$PIDFILE" ] || return 0
    pid=$(cat "$PIDFILE")
    [ -r "/proc/$pid/stat" ] || return 0
    st=$(sed 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
    [ "$st" = Z ] || [ "$st" = X ] || echo "$st"
}

pid_of() {
    cat "$PIDFILE"
}

install_wheels() {
    if ! command -v iptables >/dev/null 2>&1; then
        # Only a base image without iptables (a stock Python image) gets here: it needs
        # Debian's archive once. Our own base from debootstrap has every tool already.
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            iptables iproute2 procps >/dev/null
        rm -rf /var/lib/apt/lists/*
    fi
    mkdir -p "$SITE"
    python3 - "$1" "$SITE" <<'PY'
import pathlib, sys, zipfile
src, site = pathlib.Path(sys.argv[1]), sys.argv[2]
wheels = sorted(src.glob("*.whl"))
if not wheels:
    sys.exit(f"no wheels in {src}")
for wheel in wheels:
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
PY
    python3 -m compileall -q "$SITE" >/dev/null || true
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
idle)
    trap 'exit 0' TERM INT
    while :; do
        sleep 86400 &
        wait $! || true
    done
    ;;
start)
    [ $# -gt 0 ] || { echo "start: no command" >&2; exit 2; }
    if [ -n "$(state)" ]; then
        echo "already running: pid $(pid_of)" >&2
        exit 3
    fi
    command -v "$1" >/dev/null 2>&1 || { echo "$1: command not found" >&2; exit 127; }
    mkdir -p "$(dirname "$PIDFILE")" "$(dirname "$LOG")"
    echo "--- start: $*" >>"$LOG"
    "$@" >>"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    echo $!
    ;;
signal)
    [ -n "$(state)" ] || exit 0
    kill -s "$1" "$(pid_of)" 2>/dev/null || true
    if [ "$1" = STOP ]; then
        # A stop takes effect when the process next runs: return once it has (or after 2 s).
        tries=0
        while [ "$(state)" != T ] && [ "$(state)" != t ] && [ "$tries" -lt 20 ]; do
            sleep 0.1
            tries=$((tries + 1))
        done
    fi
    ;;
kill)
    # SIGKILL, and return only once it is gone (or after 5 s), so a restart can follow.
    [ -n "$(state)" ] || exit 0
    kill -s KILL "$(pid_of)" 2>/dev/null || true
    tries=0
    while [ -n "$(state)" ] && [ "$tries" -lt 50 ]; do
        sleep 0.1
        tries=$((tries + 1))
    done
    [ -z "$(state)" ]
    ;;
stop)
    [ -n "$(state)" ] || exit 0
    pid=$(pid_of)
    kill -s TERM "$pid" 2>/dev/null || true
    kill -s CONT "$pid" 2>/dev/null || true
    deadline=$(( $(date +%s) + ${1:-3} ))
    while [ -n "$(state)" ] && [ "$(date +%s)" -lt "$deadline" ]; do
        sleep 0.1
    done
    [ -z "$(state)" ] || kill -s KILL "$pid" 2>/dev/null || true
    ;;
status)
    st=$(state)
    [ -n "$st" ] || exit 1
    echo "$(pid_of) $st"
    ;;
install)
    install_wheels "$1"
    ;;
*)
    echo "usage: raftkv-node idle|start ARGV...|signal SIG|kill|stop SECONDS|status|install DIR" >&2
    exit 2
    ;;
esac

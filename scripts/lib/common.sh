# shellcheck shell=bash
# Helpers shared by scripts/start and scripts/bench. Source it; it defines functions only.

# Put the Swift toolchain on PATH when it is installed at /opt/swift but PATH misses it.
respool_ensure_swift() {
    if ! command -v swift >/dev/null 2>&1 && [[ -x /opt/swift/usr/bin/swift ]]; then
        export PATH="/opt/swift/usr/bin:$PATH"
    fi
    command -v swift >/dev/null 2>&1
}

# Print N distinct free TCP ports on 127.0.0.1, space-separated (the kernel picks them; all are held
# open until every one is chosen, so they differ from each other).
respool_free_ports() {
    python3 - "${1:-1}" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# True when something at HOST:PORT answers PING (PONG, or an error such as NOAUTH: a Redis is there).
respool_redis_answers() {
    local host=$1 port=$2 out
    out=$(timeout 1 redis-cli -h "$host" -p "$port" ping 2>/dev/null) || return 1
    [[ $out == PONG || $out == NOAUTH* || $out == ERR* || $out == LOADING* ]]
}

# Wait (up to SECONDS, default 10) until redis at 127.0.0.1:PORT answers PONG while PID is alive.
respool_wait_redis() {
    local port=$1 pid=$2 deadline=$((SECONDS + ${3:-10}))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || return 1
        [[ $(timeout 1 redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]] && return 0
        sleep 0.05
    done
    return 1
}

# State letter of PID from /proc (R, S, Z, ...), empty when gone.
respool_proc_state() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    s=${s##*) }
    printf '%s' "${s%% *}"
}

# Stop PID with SIGTERM, wait up to SECONDS (default 10), then SIGKILL. Prints nothing; returns what
# `wait PID` returns (the exit status when PID is a child of this shell, 127 when it is not).
respool_stop_pid() {
    local pid=$1 grace=${2:-10} i rc=0 state
    [[ -n $pid ]] || return 0
    state=$(respool_proc_state "$pid")
    if [[ -n $state && $state != Z ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 20; i++)); do
            state=$(respool_proc_state "$pid")
            [[ -z $state || $state == Z ]] && break
            sleep 0.05
        done
        state=$(respool_proc_state "$pid")
        if [[ -n $state && $state != Z ]]; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || rc=$?
    return "$rc"
}

# respool_make_test_certs DIR: a throw-away CA (DIR/ca.crt) and a server certificate for localhost and 127.0.0.1
# (DIR/server.crt, DIR/server.key), EC P-256, valid two days, made with the openssl command. Fails when it cannot.
respool_make_test_certs() {
    local dir=$1
    local -a ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    command -v openssl >/dev/null 2>&1 || return 1
    mkdir -p "$dir"
    echo "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$dir/ext"
    {
        openssl req -x509 "${ec[@]}" -keyout "$dir/ca.key" -out "$dir/ca.crt" -days 2 -subj "/CN=respool test CA" &&
            openssl req "${ec[@]}" -keyout "$dir/server.key" -out "$dir/server.csr" -subj /CN=server &&
            openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
                -out "$dir/server.crt" -days 2 -extfile "$dir/ext"
    } >/dev/null 2>&1
}

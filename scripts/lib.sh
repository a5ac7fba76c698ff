# Shared by the demo and cluster scripts: start processes in the background,
# wait for their ports by polling, and stop everything on exit.

. "$(dirname "${BASH_SOURCE[0]}")/target-dir.sh"

# The debug binaries `cargo build --bins` made; BIN=... overrides.
if [ -z "${BIN:-}" ]; then
    BIN="$(target_dir)/debug"
    [ -d "$BIN" ] || { echo "no build output in $BIN: run cargo build --bins" >&2; exit 1; }
fi
PIDS=()

stop_all() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}

# start NAME ARGS...: runs $BIN/NAME in the background and remembers it.
start() {
    "$BIN/$1" "${@:2}" &
    PIDS+=($!)
}

# wait_port HOST:PORT: polls until something listens there (10 s at most).
wait_port() {
    local host=${1%:*} port=${1##*:}
    [ "$host" = localhost ] && host=127.0.0.1
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1 (port busy or server failed)" >&2
    return 1
}

say() { printf '\n== %s\n' "$*"; }

# start_cluster CONFIG BLOCK_PORT ADDR...: a BlockStore on BLOCK_PORT and one
# Raft server per ADDR (CONFIG's MetaStoreAddrs, in order); server 0 leads.
start_cluster() {
    local config=$1 block_port=$2 i
    shift 2
    start surfstore-server -s block -p "$block_port" -l
    wait_port "localhost:$block_port"
    for ((i = 0; i < $#; i++)); do
        start surfstore-raft-server -f "$config" -i "$i"
    done
    for addr in "$@"; do wait_port "$addr"; done
    "$BIN/surfstore-ctl" set-leader "$1"
    "$BIN/surfstore-ctl" heartbeat "$1"
}

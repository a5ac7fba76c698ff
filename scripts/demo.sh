#!/usr/bin/env bash
# `make demo`: one server, two clients, one round trip, everything cleaned up.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug}
PORT=${DEMO_PORT:-18081}
WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*"; }

say "starting surfstore-server -s both on localhost:$PORT"
"$BIN/surfstore-server" -s both -p "$PORT" -l "localhost:$PORT" &
SERVER_PID=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server failed to start (port $PORT busy? set DEMO_PORT)"; exit 1; }
    sleep 0.1
done

A="$WORK/alice" B="$WORK/bob"
mkdir -p "$A/photos/2026" "$B"
echo "hello from alice" > "$A/hello.txt"
: > "$A/empty.txt"
head -c 20000 /dev/urandom > "$A/photos/2026/beach.jpg"
say "alice's directory"
(cd "$A" && find . -type f | sort)

say "alice syncs (block size 4096)"
"$BIN/surfstore-client" "localhost:$PORT" "$A" 4096
say "bob syncs into an empty directory"
"$BIN/surfstore-client" "localhost:$PORT" "$B" 4096
(cd "$B" && find . -type f | sort)
diff -r --exclude=index.txt "$A" "$B" && echo "bob has exactly alice's files"

say "bob edits hello.txt and deletes empty.txt; both sync"
echo "bob was here" >> "$B/hello.txt"
rm "$B/empty.txt"
"$BIN/surfstore-client" "localhost:$PORT" "$B" 4096
"$BIN/surfstore-client" "localhost:$PORT" "$A" 4096
cat "$A/hello.txt"
[ ! -e "$A/empty.txt" ] && echo "empty.txt is gone on alice's side too"
say "alice's index.txt"
cat "$A/index.txt"
say "demo finished; stopping the server"

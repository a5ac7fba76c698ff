#!/usr/bin/env bash
# `make demo`: one server, two clients, one round trip, everything cleaned up.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
PORT=${DEMO_PORT:-18081}
WORK=$(mktemp -d)
trap 'stop_all; rm -rf "$WORK"' EXIT

say "starting surfstore-server -s both on localhost:$PORT"
start surfstore-server -s both -p "$PORT" -l "localhost:$PORT"
wait_port "localhost:$PORT"

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

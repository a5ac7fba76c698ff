#!/usr/bin/env bash
# `make demo-raft`: a BlockStore and three Raft servers; a client syncs, the
# leader crashes, another server becomes leader, a second client still gets
# every file.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
BASE=${DEMO_PORT:-19000}
WORK=$(mktemp -d)
trap 'stop_all; rm -rf "$WORK"' EXIT
S0="localhost:$((BASE + 1))" S1="localhost:$((BASE + 2))" S2="localhost:$((BASE + 3))"
CONFIG="$WORK/cluster.json"
printf '{"MetaStoreAddrs": ["%s", "%s", "%s"], "BlockStoreAddrs": ["localhost:%s"]}\n' \
    "$S0" "$S1" "$S2" "$BASE" > "$CONFIG"

say "starting a BlockStore and three Raft servers; server 0 leads"
start_cluster "$CONFIG" "$BASE" "$S0" "$S1" "$S2"
"$BIN/surfstore-ctl" status -f "$CONFIG"

A="$WORK/alice" B="$WORK/bob"
mkdir -p "$A/docs" "$B"
echo "replicated hello" > "$A/hello.txt"
head -c 50000 /dev/urandom > "$A/docs/report.pdf"
say "alice syncs through the cluster"
"$BIN/surfstore-client" -f "$CONFIG" "$A" 4096

say "the leader ($S0) crashes; $S1 becomes leader"
"$BIN/surfstore-ctl" crash "$S0"
"$BIN/surfstore-ctl" set-leader "$S1"
"$BIN/surfstore-ctl" heartbeat "$S1"
"$BIN/surfstore-ctl" status -f "$CONFIG"

say "bob syncs: the client finds the new leader by itself"
"$BIN/surfstore-client" -f "$CONFIG" "$B" 4096
(cd "$B" && find . -type f | sort)
diff -r --exclude=index.txt "$A" "$B" && echo "bob has exactly alice's files"

say "the old leader comes back and catches up"
"$BIN/surfstore-ctl" restore "$S0"
"$BIN/surfstore-ctl" heartbeat "$S1"
"$BIN/surfstore-ctl" status -f "$CONFIG"
say "demo finished; stopping the cluster"

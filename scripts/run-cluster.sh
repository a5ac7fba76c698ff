#!/usr/bin/env bash
# `make run-cluster`: the BlockStore and three Raft servers of
# example_config.json in the foreground, server 0 leader. Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
trap stop_all EXIT
start_cluster example_config.json 8081 localhost:9007 localhost:9008 localhost:9009
"$BIN/surfstore-ctl" status -f example_config.json
echo "cluster running; sync with: $BIN/surfstore-client -f example_config.json DIR 4096 (Ctrl-C stops)"
wait

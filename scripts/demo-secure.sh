#!/usr/bin/env bash
# `make demo-secure`: certificates and tokens, then a BlockStore and three
# Raft servers that speak TLS 1.3 only, verify each other's certificates
# (mutual TLS) and accept only known tokens; a user syncs, and the same user
# trying to crash the leader is refused.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
BASE=${DEMO_PORT:-19100}
WORK=$(mktemp -d)
trap 'stop_all; rm -rf "$WORK"' EXIT
CTL="$BIN/surfstore-ctl"

say "a development CA and a certificate for localhost (surfstore-ctl gen-certs)"
"$CTL" gen-certs "$WORK/certs" --hosts localhost,127.0.0.1
C="$WORK/certs"

say "one token per role (surfstore-ctl add-token); the server keeps only hashes"
for role in user peer admin; do
    "$CTL" add-token "$role" "demo-$role" "$WORK/tokens" | tail -n 1 > "$WORK/$role.tok"
done
chmod 600 "$WORK"/*.tok
cat "$WORK/tokens"

S0="localhost:$((BASE + 1))" S1="localhost:$((BASE + 2))" S2="localhost:$((BASE + 3))"
CONFIG="$WORK/cluster.json"
printf '{"MetaStoreAddrs": ["%s", "%s", "%s"], "BlockStoreAddrs": ["localhost:%s"]}\n' \
    "$S0" "$S1" "$S2" "$BASE" > "$CONFIG"
SERVER_TLS=(--tls-cert "$C/server.pem" --tls-key "$C/server.key" --tls-client-ca "$C/ca.pem"
    --auth-tokens "$WORK/tokens")
CLIENT_TLS=(--ca "$C/ca.pem" --tls-cert "$C/server.pem" --tls-key "$C/server.key")

say "a secure BlockStore and three secure Raft servers"
start surfstore-server -s block -p "$BASE" -l "${SERVER_TLS[@]}"
wait_port "localhost:$BASE"
for i in 0 1 2; do
    start surfstore-raft-server -f "$CONFIG" -i "$i" "${SERVER_TLS[@]}" \
        --peer-token-file "$WORK/peer.tok"
done
for addr in "$S0" "$S1" "$S2"; do wait_port "$addr"; done
"$CTL" "${CLIENT_TLS[@]}" --token-file "$WORK/admin.tok" set-leader "$S0"

A="$WORK/alice" B="$WORK/bob"
mkdir -p "$A" "$B"
echo "only over TLS" > "$A/secret.txt"
head -c 50000 /dev/urandom > "$A/photo.jpg"
say "alice syncs with her user token"
"$BIN/surfstore-client" "${CLIENT_TLS[@]}" --token-file "$WORK/user.tok" -f "$CONFIG" "$A" 4096
say "bob syncs with the same token from SURFSTORE_TOKEN"
SURFSTORE_TOKEN=$(cat "$WORK/user.tok") "$BIN/surfstore-client" "${CLIENT_TLS[@]}" -f "$CONFIG" "$B" 4096
diff -r --exclude=index.txt "$A" "$B" && echo "bob has exactly alice's files"

say "the followers hold the entries (admin token)"
"$CTL" "${CLIENT_TLS[@]}" --token-file "$WORK/admin.tok" heartbeat "$S0"
"$CTL" "${CLIENT_TLS[@]}" --token-file "$WORK/admin.tok" status -f "$CONFIG"

say "a user token may not crash the leader"
if "$CTL" "${CLIENT_TLS[@]}" --token-file "$WORK/user.tok" crash "$S0"; then
    echo "a user crashed the leader: the demo failed" >&2
    exit 1
fi
echo "refused, as it should be"

say "nor may a client without a token sync (it changes nothing)"
if env -u SURFSTORE_TOKEN "$BIN/surfstore-client" "${CLIENT_TLS[@]}" -f "$CONFIG" "$B" 4096; then
    echo "a client without a token synced: the demo failed" >&2
    exit 1
fi
echo "refused, as it should be"
say "demo finished; stopping the cluster"

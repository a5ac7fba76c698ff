#!/usr/bin/env bash
# `make demo-s3`: SeaweedFS as the S3 store, a BlockStore keeping its blocks
# there, a MetaStore, two clients syncing through them, and the objects the
# bucket then holds. Everything is stopped and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
# DEMO_PORT..DEMO_PORT+9: SeaweedFS's eight ports, the BlockStore, the MetaStore.
BASE=${DEMO_PORT:-18300}
WEED=${SURFSTORE_WEED:-$(target_dir)/s3-venv/bin/weed}
[ -x "$WEED" ] || { echo "no SeaweedFS at $WEED: run make s3-tools" >&2; exit 1; }
BLOCK_PORT=$((BASE + 8)) META_PORT=$((BASE + 9)) BUCKET=surfstore-demo
WORK=$(mktemp -d)
# SeaweedFS takes about 15 s to stop on SIGTERM; its data is thrown away here.
trap '[ -n "${WEED_PID:-}" ] && kill -9 "$WEED_PID" 2>/dev/null; stop_all; rm -rf "$WORK"' EXIT

# What the BlockStore reads, and what the listing below signs with.
export AWS_ACCESS_KEY_ID=demo-key AWS_SECRET_ACCESS_KEY=demo-secret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL="http://127.0.0.1:$((BASE + 6))" AWS_ALLOW_HTTP=true
s3() { curl -sS --max-time 10 --aws-sigv4 "aws:amz:$AWS_REGION:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" "$@"; }

say "starting SeaweedFS (S3 on $AWS_ENDPOINT_URL; log in $WORK/weed.log)"
mkdir "$WORK/weed"
SURFSTORE_WEED=$WEED scripts/seaweedfs.sh "$WORK/weed" "$BASE" >"$WORK/weed.log" 2>&1 &
WEED_PID=$!
PIDS+=("$WEED_PID")
# Ready when it creates the bucket and stores a first object in it (about
# 4 s, then a few more to set up the new bucket's volumes).
echo ready >"$WORK/ready"
deadline=$((SECONDS + 90))
until s3 -f -o /dev/null -T "$WORK/ready" "$AWS_ENDPOINT_URL/$BUCKET/ready" 2>/dev/null; do
    if ((SECONDS > deadline)); then
        echo "SeaweedFS did not store an object within 90 s; its log:" >&2
        cat "$WORK/weed.log" >&2
        exit 1
    fi
    s3 -o /dev/null -X PUT "$AWS_ENDPOINT_URL/$BUCKET" 2>/dev/null || true
    sleep 0.1
done
echo "bucket $BUCKET created"

say "starting a BlockStore on s3://$BUCKET/blocks and a MetaStore"
start surfstore-server -s block -p "$BLOCK_PORT" -l --s3 "s3://$BUCKET/blocks"
start surfstore-server -s meta -p "$META_PORT" -l "localhost:$BLOCK_PORT"
wait_port "localhost:$BLOCK_PORT"
wait_port "localhost:$META_PORT"

A="$WORK/alice" B="$WORK/bob"
mkdir -p "$A/photos" "$B"
echo "hello from alice, through S3" > "$A/hello.txt"
head -c 50000 /dev/urandom > "$A/photos/beach.jpg"
say "alice syncs (block size 4096)"
"$BIN/surfstore-client" "localhost:$META_PORT" "$A" 4096
say "bob syncs into an empty directory"
"$BIN/surfstore-client" "localhost:$META_PORT" "$B" 4096
(cd "$B" && find . -type f ! -name index.txt | sort)
diff -r --exclude=index.txt "$A" "$B" && echo "bob has exactly alice's files"

say "the objects in s3://$BUCKET (one per block, named by its hash)"
# (%2F: curl signs the query as written, and S3 checks it encoded)
s3 "$AWS_ENDPOINT_URL/$BUCKET?list-type=2&prefix=blocks%2F" | grep -o "<Key>[^<]*</Key>" | sed "s/<[^>]*>//g"
say "demo finished; stopping the servers"

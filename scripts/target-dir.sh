# Sourced by the scripts that need cargo's build output directory.

# target_dir: where cargo puts build output, CARGO_TARGET_DIR and
# .cargo/config.toml included (cargo metadata resolves them all).
target_dir() {
    "${CARGO:-cargo}" metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
}

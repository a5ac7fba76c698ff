//! Compiles `proto/surfstore.proto` into Rust types and tonic services, and
//! the bench's subset of etcd's API (`benches/surfstore/etcd.proto`) into
//! client stubs that only the bench includes (`etcdserverpb.rs` in
//! `OUT_DIR`; the library does not).
//!
//! A fresh machine has no `protoc`, so the build uses the one vendored by the
//! `protoc-bin-vendored` crate, together with its copy of the well-known types
//! (`google/protobuf/empty.proto`).

use std::error::Error;
use std::path::Path;

fn main() -> Result<(), Box<dyn Error>> {
    git_commit();
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;

    let mut config = prost_build::Config::new();
    config.protoc_executable(&protoc);
    // Block payloads are handed around without copies.
    config.bytes([
        ".surfstore.Block.blockData",
        ".surfstore.InstallSnapshotInput.data",
    ]);

    tonic_prost_build::configure().compile_with_config(
        config,
        &[Path::new("proto/surfstore.proto")],
        &[Path::new("proto"), well_known.as_path()],
    )?;
    println!("cargo:rerun-if-changed=proto/surfstore.proto");

    // The bench is etcd's client, never its server.
    let mut etcd = prost_build::Config::new();
    etcd.protoc_executable(&protoc);
    tonic_prost_build::configure()
        .build_server(false)
        .compile_with_config(
            etcd,
            &[Path::new("benches/surfstore/etcd.proto")],
            &[Path::new("benches/surfstore")],
        )?;
    println!("cargo:rerun-if-changed=benches/surfstore/etcd.proto");
    Ok(())
}

/// Sets `SURFSTORE_GIT_COMMIT` for `--version`: the short hash of HEAD, or
/// `unknown` when there is no git or no repository (a source tarball);
/// the build never fails for it. Rebuilt when HEAD moves.
fn git_commit() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|text| text.trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SURFSTORE_GIT_COMMIT={commit}");
    for path in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["rev-parse", "--git-path", "refs/heads"]),
    ]
    .into_iter()
    .flatten()
    {
        println!("cargo:rerun-if-changed={path}");
    }
}

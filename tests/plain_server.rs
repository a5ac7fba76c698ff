//! `surfstore-server` from the outside: its command line.

mod common;

use common::{bin, run};

#[test]
fn bad_arguments_exit_64_with_usage() {
    for args in [
        &[][..],
        &["-s", "nope"][..],
        &["-s", "meta"][..],
        &["-s", "both", "-p", "notaport"][..],
        &["-s", "block", "--bogus"][..],
        &["-s", "both", "not-an-address"][..],
    ] {
        let out = run(&bin("surfstore-server"), args);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?} printed no usage");
    }
}

//! Lets the linker find `kernel.ld` whatever directory cargo runs it from.

use std::env;

fn main() {
    let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo::rustc-link-search={dir}");
    println!("cargo::rerun-if-changed=kernel.ld");
}

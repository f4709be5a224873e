//! Lets the linker find `memory.ld` whatever directory cargo runs it from.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo::rustc-link-search={dir}");
    println!("cargo::rerun-if-changed=memory.ld");
}

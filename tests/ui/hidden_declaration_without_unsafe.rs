// The macro behind declare_static_call! is no way around its `unsafe`.
mod a {
    pub type Arg = &'static u64;
    static_call::static_call! { pub static H: fn(Arg) -> u64 = read; }
    fn read(p: Arg) -> u64 {
        *p
    }
}

mod b {
    pub type Arg = usize;
    static_call::__static_call_key! { @abi [] declare [] [pub] H [Arg] [u64] declared }
}

fn main() {
    b::H.call(0x10);
}

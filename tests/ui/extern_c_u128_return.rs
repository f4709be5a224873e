static_call::static_call! { static WIDE: extern "C" fn() -> u128 = RET0; }
fn main() {}

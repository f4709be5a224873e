static_call::static_call! { static HOOK: fn() -> u64 = NULL; }
fn main() {}

static_call::static_call! { static LOOKUP: fn() -> &'static u8 = RET0; }
fn main() {}

struct Status(u32);
impl static_call::NullSafe for Status {}
fn main() {}

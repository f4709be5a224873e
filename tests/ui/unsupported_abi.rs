extern "system" fn tick() {}
static_call::static_call! { static TICK: extern "system" fn() = tick; }
fn main() {}

fn tick() {}
static TICK_PTR: fn() = tick;
static_call::static_call! { static TICK: fn() = TICK_PTR; }
fn main() {}

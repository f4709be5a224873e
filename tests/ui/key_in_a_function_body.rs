fn tick() {}
fn main() {
    static_call::static_call! { static TICK: fn() = tick; }
    TICK.call();
}

#![deny(warnings)]
// Linux spells keys in lower case; they build without warnings.
fn tick() -> u64 { 7 }
extern "C" fn c_tick() -> u64 { 8 }
static_call::static_call! {
    static sched_clock: fn() -> u64 = tick;
    static pv_clock: extern "C" fn() -> u64 = c_tick;
}
fn main() {
    assert_eq!(sched_clock.call(), 7);
    assert_eq!(pv_clock.call(), 8);
}

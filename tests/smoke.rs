static_call::static_call! {
    pub static TICK: fn(u32) -> u64 = t1;
}
fn t1(x: u32) -> u64 {
    x as u64 + 1
}
fn t2(x: u32) -> u64 {
    x as u64 + 2
}
#[test]
fn smoke() {
    assert_eq!(TICK.call(1), 2);
    TICK.update(t2).unwrap();
    assert_eq!(TICK.call(1), 3);
}

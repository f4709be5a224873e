static_call::static_call_ops! {
    pub trait Clock in clock {
        static CLOCK_READ: fn read(&self) -> u64;
        static CLOCK_RATE: fn rate_hz() -> u64;
    }
    default = Boot;
}
struct Boot;
static BOOT: Boot = Boot;
impl Clock for Boot {
    fn instance() -> &'static Self { &BOOT }
    fn read(&self) -> u64 { 0 }
}
fn main() {}

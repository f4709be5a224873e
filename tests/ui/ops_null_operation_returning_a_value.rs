static_call::static_call_ops! {
    pub trait Clock in clock {
        static CLOCK_READ: optional fn read() -> u64 = NULL;
    }
    default = Boot;
}
struct Boot;
impl Clock for Boot {}
fn main() {}

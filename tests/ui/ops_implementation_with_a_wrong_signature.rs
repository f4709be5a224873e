static_call::static_call_ops! {
    pub trait Clock in clock {
        static CLOCK_READ: fn read(&self) -> u64;
        static CLOCK_SUSPEND: optional fn suspend(&self) = NULL;
    }
    default = Boot;
}
struct Boot;
static BOOT: Boot = Boot;
impl Clock for Boot {
    fn instance() -> &'static Self { &BOOT }
    fn read(&self) -> u32 { 0 }
}
struct Other;
static OTHER: Other = Other;
impl Clock for Other {
    fn instance() -> &'static Self { &OTHER }
    fn read(&self) -> u64 { 0 }
    const CLOCK_SUSPEND: Option<fn(&Self, u32)> = None;
}
fn main() {}

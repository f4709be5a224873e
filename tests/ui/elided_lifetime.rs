fn log(_: &str) {}
static_call::static_call! { static LOG: fn(&str) = log; }
fn main() {}

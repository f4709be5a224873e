static_call::static_call! { static SCALE: extern "C" fn(f64) = NULL; }
fn main() {}

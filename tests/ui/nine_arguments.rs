static_call::static_call! {
    static MANY: fn(u8, u8, u8, u8, u8, u8, u8, u8, u8) = NULL;
}
fn main() {}

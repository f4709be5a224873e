// A writer stores wherever a backend asks inside what it was built for, so
// building one over addresses is a promise only `unsafe` code can make.
use static_call::writer::{Alias, Direct};

fn main() {
    let _alias = Alias::new(0x1000, 0x9000, 0x100);
    let _direct = Direct::new();
}

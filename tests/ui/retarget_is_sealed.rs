// A forged batch entry would hand retarget_all any address to patch.
use static_call::arch::{BatchItem, active::Slot};
use static_call::ops::{Batch, Retarget};
use static_call::UpdateError;

struct Forged;

impl Retarget for Forged {
    fn apply(&self, _: &Batch<'_>) -> Result<(), UpdateError> {
        Ok(())
    }
    fn undo(&self, _: &Batch<'_>) -> Result<(), UpdateError> {
        Ok(())
    }
    fn key_name(&self) -> &'static str {
        "FORGED"
    }
    fn batch_item(&self) -> BatchItem<'static, Slot> {
        panic!("never built")
    }
    fn trampoline_addr(&self) -> usize {
        0x1000
    }
    fn check(&self) -> Result<(), UpdateError> {
        Ok(())
    }
}

fn main() {}

static_call::static_call! { pub static IRQ_HOOK: fn(u32) -> u32 = ack; }
fn ack(irq: u32) -> u32 { irq }
mod core_kernel {
    static_call::declare_static_call! { pub static IRQ_HOOK: fn(u32) -> u32; }
}
fn main() {}

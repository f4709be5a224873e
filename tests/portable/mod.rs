//! A portable kernel's core, written once: the code a kernel author would
//! copy. The core asks the platform for a clock through `Platform`, whose
//! operations are static calls; each platform installs its own
//! implementation at boot with one call, and from then on every core call
//! is a direct call of the operation's trampoline.
//!
//! Used by `tests/portable_kernel.rs` (x86-64 and riscv64 Linux, and
//! aarch64 Linux under qemu-aarch64) and by the arm64 virt-board kernel
//! (`tests/virt-kernel`), each with its own `Platform`.

static_call::static_call_ops! {
    /// What the core needs from the platform it runs on.
    pub trait Platform in platform {
        /// The free-running counter, in ticks.
        static PLATFORM_TICKS: fn ticks() -> u64;
        /// The counter's frequency in Hz.
        static PLATFORM_TICK_HZ: fn tick_hz() -> u64;
        /// Which architecture this platform is (see [`Arch`]).
        static PLATFORM_ARCH: fn arch() -> u32;
        /// Lets the CPU rest for a moment in a busy-wait loop.
        static PLATFORM_RELAX: optional fn relax() = NULL;
    }
    default = Unbooted;
}

/// Architectures, as [`Platform::arch`] reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Arch {
    /// No platform installed yet.
    Unbooted = 0,
    /// arm64.
    Aarch64 = 1,
    /// x86-64.
    X86_64 = 2,
    /// riscv64.
    Riscv64 = 3,
}

impl Arch {
    /// The architecture [`Platform::arch`] names, if it names one.
    pub fn from_id(id: u32) -> Option<Arch> {
        [Arch::Unbooted, Arch::Aarch64, Arch::X86_64, Arch::Riscv64]
            .into_iter()
            .find(|a| *a as u32 == id)
    }
}

/// Core code: the architecture the installed platform runs on.
pub fn arch() -> Option<Arch> {
    Arch::from_id(platform::arch())
}

/// The platform in place before boot code installs the real one: a clock
/// that stands still.
pub struct Unbooted;

impl Platform for Unbooted {
    fn ticks() -> u64 {
        0
    }
    fn tick_hz() -> u64 {
        1
    }
    fn arch() -> u32 {
        Arch::Unbooted as u32
    }
}

/// Core code: nanoseconds since the counter started.
pub fn uptime_ns() -> u64 {
    let (ticks, hz) = (platform::ticks(), platform::tick_hz());
    (u128::from(ticks) * 1_000_000_000 / u128::from(hz)) as u64
}

/// Core code: waits at least `us` microseconds on the platform's counter;
/// returns how many times it asked the platform to relax.
pub fn delay_us(us: u64) -> u64 {
    let hz = platform::tick_hz();
    let end = platform::ticks() + (u128::from(hz) * u128::from(us) / 1_000_000) as u64;
    let mut relaxed = 0;
    while platform::ticks() < end {
        platform::relax();
        relaxed += 1;
    }
    relaxed
}

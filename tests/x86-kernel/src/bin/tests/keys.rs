//! The keys the suite walks, their targets (near ones in Rust, far ones in
//! `.far_text` at 4 GiB, out of rel32 reach), and what a call of each
//! state must observe.
//!
//! Every target tags what it returns (value keys) or stores through its
//! cell argument (effect keys) with its own constant, so a call says which
//! state it reached: `UNTOUCHED` for NULL (effect keys) and RET0 (effect
//! keys), 0 for RET0 (value keys).

use core::sync::atomic::Ordering;

use alloc::vec::Vec;
use static_call::Error;
use static_call::arch::UpdateWriter;
use static_call::arch::x86_64::{self as x86, Form, Image};

pub const NEAR: u64 = 1000;
pub const NEAR2: u64 = 1500;
pub const FAR: u64 = 2000;
/// What an effect call leaves in its cell when no target ran.
pub const UNTOUCHED: u64 = u64::MAX;

/// The states a key is walked through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Near,
    Near2,
    Far,
    Null,
    Ret0,
}
pub use State::*;

/// The effect keys' states, and the value keys' (NULL needs `()`).
pub const EFFECT_STATES: &[State] = &[Near, Near2, Far, Null, Ret0];
pub const VALUE_STATES: &[State] = &[Near, Near2, Far, Ret0];

fn near_value(x: u32) -> u64 {
    u64::from(x) + NEAR
}
fn near2_value(x: u32) -> u64 {
    u64::from(x) + NEAR2
}
fn near_effect(out: *mut u64, v: u64) {
    // SAFETY: every caller passes a pointer to a live cell.
    unsafe { out.write_volatile(v + NEAR) }
}
fn near2_effect(out: *mut u64, v: u64) {
    // SAFETY: as above.
    unsafe { out.write_volatile(v + NEAR2) }
}
extern "C" fn c_near_value(x: u64) -> u64 {
    x + NEAR
}
extern "C" fn c_near2_value(x: u64) -> u64 {
    x + NEAR2
}
extern "C" fn c_near_effect(out: *mut u64, v: u64) {
    // SAFETY: as above.
    unsafe { out.write_volatile(v + NEAR) }
}
extern "C" fn c_near2_effect(out: *mut u64, v: u64) {
    // SAFETY: as above.
    unsafe { out.write_volatile(v + NEAR2) }
}

// The far targets: hand-written, self-contained (nothing at 4 GiB can
// reach the kernel's data with a 32-bit displacement). Integer arguments
// and results travel in the same registers in the Rust and C ABIs.
core::arch::global_asm!(
    r#"
    .pushsection .far_text, "ax"
    .balign 16
far_value:                      // fn(u32) -> u64
    endbr64
    mov %edi, %eax
    add ${far}, %rax
    ret
    .balign 16
far_c_value:                    // extern "C" fn(u64) -> u64
    endbr64
    lea {far}(%rdi), %rax
    ret
    .balign 16
far_effect:                     // fn(*mut u64, u64), either ABI
    endbr64
    lea {far}(%rsi), %rax
    mov %rax, (%rdi)
    ret
    .popsection
    .pushsection .data.far_targets, "aw"
    .balign 8
    .global FAR_TARGETS
FAR_TARGETS:
    .quad far_value, far_c_value, far_effect
    .popsection
    "#,
    far = const FAR,
    options(att_syntax)
);

unsafe extern "C" {
    /// The far targets' addresses: 64-bit words, since 4 GiB is beyond
    /// the 32-bit relocations code would use to take them.
    static FAR_TARGETS: [usize; 3];
}

fn far_target(i: usize) -> usize {
    // SAFETY: three words of data the assembler wrote, never written.
    unsafe { core::ptr::read_volatile(&raw const FAR_TARGETS[i]) }
}
pub fn far_value() -> fn(u32) -> u64 {
    // SAFETY: `far_value` has this signature (see the assembly).
    unsafe { core::mem::transmute::<usize, fn(u32) -> u64>(far_target(0)) }
}
pub fn far_c_value() -> extern "C" fn(u64) -> u64 {
    // SAFETY: as above.
    unsafe { core::mem::transmute::<usize, extern "C" fn(u64) -> u64>(far_target(1)) }
}
pub fn far_effect() -> fn(*mut u64, u64) {
    // SAFETY: as above.
    unsafe { core::mem::transmute::<usize, fn(*mut u64, u64)>(far_target(2)) }
}
pub fn far_c_effect() -> extern "C" fn(*mut u64, u64) {
    // SAFETY: as above.
    unsafe { core::mem::transmute::<usize, extern "C" fn(*mut u64, u64)>(far_target(2)) }
}

static_call::static_call! {
    /// A Rust-ABI value key (calls are the compiler's `call`).
    pub static VAL: fn(u32) -> u64 = near_value;
    /// A Rust-ABI effect key (NULL-able).
    pub static EFF: fn(*mut u64, u64) = near_effect;
    /// An `extern "C"` value key: its calls are inline sites.
    pub static C_VAL: extern "C" fn(u64) -> u64 = c_near_value;
    /// An `extern "C"` effect key (NULL-able).
    pub static C_EFF: extern "C" fn(*mut u64, u64) = c_near_effect;
}

/// One of the walked keys, erased to what the tests need.
#[derive(Clone, Copy)]
pub enum Key {
    Val,
    Eff,
    CVal,
    CEff,
}

pub const KEYS: [Key; 4] = [Key::Val, Key::Eff, Key::CVal, Key::CEff];

impl Key {
    pub fn name(self) -> &'static str {
        match self {
            Key::Val => VAL.name(),
            Key::Eff => EFF.name(),
            Key::CVal => C_VAL.name(),
            Key::CEff => C_EFF.name(),
        }
    }

    pub fn states(self) -> &'static [State] {
        match self {
            Key::Val | Key::CVal => VALUE_STATES,
            Key::Eff | Key::CEff => EFFECT_STATES,
        }
    }

    pub fn tramp(self) -> usize {
        match self {
            Key::Val => VAL.trampoline_addr(),
            Key::Eff => EFF.trampoline_addr(),
            Key::CVal => C_VAL.trampoline_addr(),
            Key::CEff => C_EFF.trampoline_addr(),
        }
    }

    /// Moves the key to `s` through `w`.
    pub fn set(self, s: State, w: &dyn UpdateWriter) -> Result<(), Error> {
        let r = match (self, s) {
            (Key::Val, Near) => VAL.update_with(near_value, w),
            (Key::Val, Near2) => VAL.update_with(near2_value, w),
            (Key::Val, Far) => VAL.update_with(far_value(), w),
            (Key::Val, Ret0) => VAL.update_ret0_with(w),
            (Key::Eff, Near) => EFF.update_with(near_effect, w),
            (Key::Eff, Near2) => EFF.update_with(near2_effect, w),
            (Key::Eff, Far) => EFF.update_with(far_effect(), w),
            (Key::Eff, Null) => EFF.update_null_with(w),
            (Key::Eff, Ret0) => EFF.update_ret0_with(w),
            (Key::CVal, Near) => C_VAL.update_with(c_near_value, w),
            (Key::CVal, Near2) => C_VAL.update_with(c_near2_value, w),
            (Key::CVal, Far) => C_VAL.update_with(far_c_value(), w),
            (Key::CVal, Ret0) => C_VAL.update_ret0_with(w),
            (Key::CEff, Near) => C_EFF.update_with(c_near_effect, w),
            (Key::CEff, Near2) => C_EFF.update_with(c_near2_effect, w),
            (Key::CEff, Far) => C_EFF.update_with(far_c_effect(), w),
            (Key::CEff, Null) => C_EFF.update_null_with(w),
            (Key::CEff, Ret0) => C_EFF.update_ret0_with(w),
            (Key::Val | Key::CVal, Null) => unreachable!("value keys cannot be NULL"),
        };
        r.map_err(Error::from)
    }

    /// What a call with argument `v` observes in state `s`.
    pub fn expect(self, s: State, v: u64) -> u64 {
        let value = matches!(self, Key::Val | Key::CVal);
        match s {
            Near => v + NEAR,
            Near2 => v + NEAR2,
            Far => v + FAR,
            Null | Ret0 if value => 0,
            Null | Ret0 => UNTOUCHED,
        }
    }

    /// A call with `v` as the crate emits it (`KEY.call`: the compiler's
    /// call of the trampoline for Rust-ABI keys, an inline site for
    /// `extern "C"` ones), and what it observed.
    #[inline(never)]
    pub fn call(self, v: u64) -> u64 {
        let mut cell = UNTOUCHED;
        match self {
            Key::Val => VAL.call(v as u32),
            Key::Eff => {
                EFF.call(&mut cell, v);
                cell
            }
            Key::CVal => C_VAL.call(v),
            Key::CEff => {
                C_EFF.call(&mut cell, v);
                cell
            }
        }
    }

    /// The same call through the key's function pointer (`trampoline()`).
    #[inline(never)]
    pub fn call_pointer(self, v: u64) -> u64 {
        let mut cell = UNTOUCHED;
        match self {
            Key::Val => core::hint::black_box(VAL.trampoline())(v as u32),
            Key::Eff => {
                core::hint::black_box(EFF.trampoline())(&mut cell, v);
                cell
            }
            Key::CVal => core::hint::black_box(C_VAL.trampoline())(v),
            Key::CEff => {
                core::hint::black_box(C_EFF.trampoline())(&mut cell, v);
                cell
            }
        }
    }

    /// The key's inline sites.
    pub fn sites(self) -> Vec<usize> {
        let mut sites = Vec::new();
        match self {
            Key::Val | Key::Eff => {}
            Key::CVal => C_VAL.each_inline_site(|s| sites.push(s)),
            Key::CEff => C_EFF.each_inline_site(|s| sites.push(s)),
        }
        sites
    }

    /// The key's return-zero function (what RET0 installs), learnt once by
    /// [`learn_ret0`].
    pub fn ret0(self) -> usize {
        RET0S[self as usize].load(Ordering::Relaxed)
    }

    /// The current target as `query` reports it (0 for NULL).
    pub fn query(self) -> usize {
        match self {
            Key::Val => VAL.query().map_or(0, |f| f as usize),
            Key::Eff => EFF.query().map_or(0, |f| f as usize),
            Key::CVal => C_VAL.query().map_or(0, |f| f as usize),
            Key::CEff => C_EFF.query().map_or(0, |f| f as usize),
        }
    }

    /// Whether the key says it is RET0.
    pub fn is_ret0(self) -> bool {
        match self {
            Key::Val => VAL.is_ret0(),
            Key::Eff => EFF.is_ret0(),
            Key::CVal => C_VAL.is_ret0(),
            Key::CEff => C_EFF.is_ret0(),
        }
    }

    /// The target of state `s` (0 for NULL).
    pub fn target(self, s: State) -> usize {
        match (self, s) {
            (_, Null) => 0,
            (_, Ret0) => self.ret0(),
            (Key::Val, Near) => near_value as fn(u32) -> u64 as usize,
            (Key::Val, Near2) => near2_value as fn(u32) -> u64 as usize,
            (Key::Eff, Near) => near_effect as fn(*mut u64, u64) as usize,
            (Key::Eff, Near2) => near2_effect as fn(*mut u64, u64) as usize,
            (Key::CVal, Near) => c_near_value as extern "C" fn(u64) -> u64 as usize,
            (Key::CVal, Near2) => c_near2_value as extern "C" fn(u64) -> u64 as usize,
            (Key::CEff, Near) => c_near_effect as extern "C" fn(*mut u64, u64) as usize,
            (Key::CEff, Near2) => c_near2_effect as extern "C" fn(*mut u64, u64) as usize,
            (Key::Val, Far) => far_target(0),
            (Key::CVal, Far) => far_target(1),
            (Key::Eff | Key::CEff, Far) => far_target(2),
        }
    }
}

static RET0S: [core::sync::atomic::AtomicUsize; 4] =
    [const { core::sync::atomic::AtomicUsize::new(0) }; 4];

/// Learns each key's return-zero function (moving it to RET0, reading
/// `query`, and back to `Near`).
pub fn learn_ret0() -> Result<(), Error> {
    let w = x86_kernel::patching::writer();
    for key in KEYS {
        key.set(Ret0, w)?;
        RET0S[key as usize].store(key.query(), Ordering::Relaxed);
        key.set(Near, w)?;
    }
    Ok(())
}

/// The trampoline's 16 bytes, each word read with one aligned load.
pub fn image(tramp: usize) -> Image {
    // SAFETY: a live trampoline: 16 readable, 8-byte aligned bytes.
    let (entry, literal) = unsafe {
        (
            (*(tramp as *const core::sync::atomic::AtomicU64)).load(Ordering::Acquire),
            (*((tramp + 8) as *const core::sync::atomic::AtomicU64)).load(Ordering::Acquire),
        )
    };
    Image::from_words(entry, literal)
}

/// The trampoline decoded.
pub fn decoded(tramp: usize) -> Result<x86::Trampoline, Error> {
    x86::decode(tramp as u64, &image(tramp), x86::null_stub_addr())
}

/// An inline site's 8 bytes.
pub fn site_word(site: usize) -> [u8; 8] {
    // SAFETY: an inline site: 8 readable, 8-byte aligned bytes of text.
    let word = unsafe { (*(site as *const core::sync::atomic::AtomicU64)).load(Ordering::Acquire) };
    word.to_le_bytes()
}

/// The trampoline form state `s` must leave.
pub fn form_of(key: Key, s: State) -> Form {
    match s {
        Far => Form::Far,
        Null => Form::Null,
        _ => Form::Near(key.target(s) as u64),
    }
}

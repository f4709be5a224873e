//! The fallback backend for targets without a trampoline of their own.
//!
//! The key's "trampoline" is a Rust function, emitted by the macro, that
//! loads the target from the key's slot and calls it indirectly: Linux's
//! generic tier. It keeps the API identical on every target.

use super::Backend;
use crate::{Error, TextWriter};
use core::sync::atomic::{AtomicPtr, Ordering};

/// The generic backend.
#[derive(Debug)]
pub enum Generic {}

/// The current target of a key, read by its Rust trampoline on every call.
#[derive(Debug)]
pub struct Slot(AtomicPtr<()>);

impl Slot {
    /// A slot holding `target` (null for a NULL key).
    pub const fn new(target: *mut ()) -> Self {
        Slot(AtomicPtr::new(target))
    }

    /// The same slot (generic keys have no assembled code).
    pub const fn assembled_for(self, _entry: *mut ()) -> Self {
        self
    }

    /// The current target, null for NULL. Acquire pairs with the release
    /// in [`Backend::retarget`], so data the target reads that was published
    /// before the update is visible to it.
    #[inline(always)]
    pub fn load(&self) -> *mut () {
        self.0.load(Ordering::Acquire)
    }
}

// SAFETY: one atomic store switches the target; a call sees the old or the
// new value; nothing is written on error (there are no errors).
unsafe impl Backend for Generic {
    const NAME: &'static str = "generic";
    const WRITES_TEXT: bool = false;
    type Slot = Slot;
    /// Nothing to choose: one protocol.
    type Options = ();

    fn default_options() {}

    unsafe fn query(_tramp: usize, slot: &Slot) -> Result<usize, Error> {
        Ok(slot.load() as usize)
    }

    unsafe fn retarget(
        _tramp: usize,
        slot: &Slot,
        target: usize,
        _writer: &dyn TextWriter,
        (): (),
    ) -> Result<(), Error> {
        slot.0.store(target as *mut (), Ordering::Release);
        Ok(())
    }
}

/// Generic keys have no assembly trampoline.
#[cfg(static_call_backend = "generic")]
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_trampoline_asm {
    ($($tail:tt)*) => {};
}

/// Emits a key's trampoline as a Rust function that calls through the slot
/// (with the key's ABI, so it can be handed out as the key's function
/// pointer). Used by `static_call!`.
#[cfg(static_call_backend = "generic")]
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_trampoline {
    (rust $name:ident [$(($id:ident: $t:ty))*] [$($ret:ty)?] $kind:ident $($init:path)?) => {
        #[allow(clippy::too_many_arguments)]
        #[unsafe(export_name = ::core::concat!("__SCT__", ::core::stringify!($name)))]
        fn __tramp($($id: $t),*) $(-> $ret)? {
            $crate::__static_call_generic_body!(__SLOT, $($id),*)
        }
    };
    (c $name:ident [$(($id:ident: $t:ty))*] [$($ret:ty)?] $kind:ident $($init:path)?) => {
        #[allow(clippy::too_many_arguments)]
        #[unsafe(export_name = ::core::concat!("__SCT__", ::core::stringify!($name)))]
        extern "C" fn __tramp($($id: $t),*) $(-> $ret)? {
            $crate::__static_call_generic_body!(__SLOT, $($id),*)
        }
    };
}

/// The body of a generic trampoline: load the target, return for NULL,
/// else call it. Used by `__static_call_trampoline!`.
#[cfg(static_call_backend = "generic")]
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_generic_body {
    ($slot:ident, $($id:ident),*) => {{
        let target = $slot.load();
        if target.is_null() {
            // SAFETY: the slot is only null for keys whose return type is
            // `()` (NULL is checked at compile time).
            #[allow(invalid_value)]
            return unsafe { $crate::__private::core::mem::zeroed() };
        }
        // SAFETY: the slot only ever holds functions of type `__Fn`.
        let f = unsafe { $crate::__private::core::mem::transmute::<*mut (), __Fn>(target) };
        f($($id),*)
    }};
}

//! Patch plans: the ordered stores that take a trampoline from one image to
//! another, for each [`Strategy`](crate::arch::x86_64::Strategy). Pure, and
//! unit-tested on every host by executing every intermediate state.
//!
//! Every store is one aligned single-copy-atomic store (1 byte, or 8 bytes
//! at an 8-byte boundary), and the writer synchronizes all CPUs after each
//! one, so no CPU still runs bytes fetched before a store once the next
//! store begins.

use super::insn::INT3;
use super::layout::{Image, LITERAL_OFFSET};

/// One store of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// The 8-byte literal.
    Literal(u64),
    /// The whole 8-byte entry word.
    Entry([u8; 8]),
    /// The entry's first byte alone.
    First(u8),
}

impl Store {
    /// Offset of the store from the trampoline's entry.
    pub fn offset(self) -> usize {
        match self {
            Store::Literal(_) => LITERAL_OFFSET,
            Store::Entry(_) | Store::First(_) => 0,
        }
    }

    /// The bytes stored, as a buffer and a length (1 or 8).
    pub fn bytes(self) -> ([u8; 8], usize) {
        match self {
            Store::Literal(l) => (l.to_le_bytes(), 8),
            Store::Entry(e) => (e, 8),
            Store::First(b) => ([b, 0, 0, 0, 0, 0, 0, 0], 1),
        }
    }

    /// `image` as it is after this store.
    pub fn apply(self, mut image: Image) -> Image {
        match self {
            Store::Literal(l) => image.literal = l,
            Store::Entry(e) => image.entry = e,
            Store::First(b) => image.entry[0] = b,
        }
        image
    }

    /// An 8-byte word (a call site, or a trampoline's entry word) after
    /// this store; a literal store leaves it as it is.
    pub fn apply_to_word(self, mut word: [u8; 8]) -> [u8; 8] {
        match self {
            Store::Literal(_) => {}
            Store::Entry(e) => word = e,
            Store::First(b) => word[0] = b,
        }
        word
    }

    /// The store that writes back what `before` holds where this store
    /// writes: undoes it.
    pub fn undo(self, before: &Image) -> Store {
        match self {
            Store::Literal(_) => Store::Literal(before.literal),
            Store::Entry(_) => Store::Entry(before.entry),
            Store::First(_) => Store::First(before.entry[0]),
        }
    }
}

/// The stores of one retarget, in order; the writer synchronizes all CPUs
/// after each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    stores: [Store; 4],
    len: usize,
}

impl Plan {
    const fn new() -> Self {
        Plan {
            stores: [Store::First(0); 4],
            len: 0,
        }
    }

    fn push(&mut self, s: Store) {
        self.stores[self.len] = s;
        self.len += 1;
    }

    /// The stores, in the order they must be made.
    pub fn stores(&self) -> &[Store] {
        &self.stores[..self.len]
    }

    /// The image after every store of the plan, from `start`.
    pub fn states(&self, start: Image) -> impl Iterator<Item = Image> + '_ {
        self.stores().iter().scan(start, |image, s| {
            *image = s.apply(*image);
            Some(*image)
        })
    }
}

/// The int3 protocol (Linux's `text_poke_bp`), after publishing the new
/// literal: `int3` over the first byte, then the other seven bytes (as one
/// 8-byte store that keeps the `int3`), then the new first byte.
///
/// Every CPU is synchronized between stores, so once the `int3` is in
/// place no CPU runs the old instruction, and no CPU runs the new one until
/// all of it is in place; meanwhile a CPU that enters the trampoline traps
/// and is steered to the literal, which already holds the new target.
/// A far-to-far retarget only changes the literal, which the entry word
/// loads as data: no instruction is modified at all.
///
/// ```
/// use static_call::arch::x86_64::{plan, protocol::{Store, breakpoint}};
/// let (tramp, stub) = (0x5555_0000_1000, 0x5555_0000_2000);
/// let old = plan(tramp, tramp + 0x100, stub);
/// let new = plan(tramp, 0, stub); // to NULL
/// let p = breakpoint(&old, &new);
/// assert_eq!(
///     p.stores(),
///     [
///         Store::Literal(stub),
///         Store::First(0xcc),
///         Store::Entry([0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0x0f, 0xb9, 0xcc]),
///         Store::First(0xc3),
///     ]
/// );
/// ```
pub fn breakpoint(old: &Image, new: &Image) -> Plan {
    let mut plan = Plan::new();
    if old.literal != new.literal {
        plan.push(Store::Literal(new.literal));
    }
    if old.entry != new.entry {
        plan.push(Store::First(INT3));
        if old.entry[1..] != new.entry[1..] {
            let mut armed = new.entry;
            armed[0] = INT3;
            plan.push(Store::Entry(armed));
        }
        plan.push(Store::First(new.entry[0]));
    }
    plan
}

/// One aligned 8-byte store of the entry word, after publishing the new
/// literal (the approach of Josh Poimboeuf's static-calls v3, seed 002).
///
/// It relies on instruction fetch seeing an aligned 8-byte store (which
/// never crosses a cache line) either wholly or not at all. CPUs behave so
/// in practice, but the Intel SDM does not promise it: its rules for
/// cross-modifying code require the executing CPU to serialize before it
/// runs modified bytes, which is what the int3 protocol arranges.
///
/// ```
/// use static_call::arch::x86_64::{plan, protocol::{Store, atomic_store}};
/// let (tramp, stub) = (0x5555_0000_1000, 0x5555_0000_2000);
/// let old = plan(tramp, tramp + 0x100, stub);
/// let new = plan(tramp, tramp + 0x200, stub);
/// assert_eq!(
///     atomic_store(&old, &new).stores(),
///     [Store::Literal(new.literal), Store::Entry(new.entry)]
/// );
/// ```
pub fn atomic_store(old: &Image, new: &Image) -> Plan {
    let mut plan = Plan::new();
    if old.literal != new.literal {
        plan.push(Store::Literal(new.literal));
    }
    if old.entry != new.entry {
        plan.push(Store::Entry(new.entry));
    }
    plan
}

/// The phases of a batched int3 protocol (Linux's `text_poke_bp_batch`):
/// every trampoline's literal, then every `int3`, then every tail, then
/// every new first byte, with one synchronisation of all CPUs after each
/// phase, so a batch of any size costs at most four.
pub const PHASES: usize = 4;

/// The phase of the batched int3 protocol a store of a
/// [`breakpoint`] plan belongs to: each trampoline's stores keep their
/// order, and within a phase every trampoline makes the same kind of store.
///
/// ```
/// use static_call::arch::x86_64::protocol::{Store, phase};
/// assert_eq!(phase(Store::Literal(1)), 0);
/// assert_eq!(phase(Store::First(0xcc)), 1);
/// assert_eq!(phase(Store::Entry([0xcc; 8])), 2);
/// assert_eq!(phase(Store::First(0xe9)), 3);
/// ```
pub fn phase(store: Store) -> usize {
    match store {
        Store::Literal(_) => 0,
        Store::First(INT3) => 1,
        Store::Entry(_) => 2,
        Store::First(_) => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::super::insn::{self, JMP_REL32, RET};
    use super::super::layout::{FAR_ENTRY, decode, plan, recognise};
    use super::*;
    use std::vec::Vec;

    const TRAMP: u64 = 0x5555_5555_1000;
    const STUB: u64 = 0x5555_5555_2000;

    /// What a call entering the trampoline does.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Effect {
        Jump(u64),
        Return,
    }

    fn via_literal(literal: u64) -> Effect {
        assert_ne!(literal, 0, "a call read a literal never written");
        if literal == STUB {
            Effect::Return
        } else {
            Effect::Jump(literal)
        }
    }

    /// Executes the entry word of `entry_state` with the literal of
    /// `literal_state` (a CPU may load the literal later than it fetched
    /// the entry, so the literal may be newer). An `int3` traps to the
    /// handler, which continues at the literal it reads.
    fn execute(entry_state: &Image, literal_state: &Image) -> Effect {
        let e = &entry_state.entry;
        match e[0] {
            INT3 => via_literal(literal_state.literal),
            JMP_REL32 => {
                Effect::Jump(insn::decode_jmp_rel32(TRAMP, &e[..5].try_into().unwrap()).unwrap())
            }
            RET => Effect::Return,
            _ if *e == FAR_ENTRY => via_literal(literal_state.literal),
            _ => panic!("undecodable entry {e:x?}"),
        }
    }

    fn targets() -> [u64; 6] {
        [
            TRAMP + 0x3000,     // near A
            TRAMP - 0x20_0000,  // near B
            TRAMP + (8 << 30),  // far C
            TRAMP - (16 << 30), // far D
            0,                  // NULL
            STUB - 0x4000,      // RET0: a near function
        ]
    }

    fn plans(old: &Image, new: &Image) -> [(&'static str, Plan); 2] {
        [
            ("breakpoint", breakpoint(old, new)),
            ("atomic", atomic_store(old, new)),
        ]
    }

    /// The safety argument of both strategies, executed: for every pair of
    /// targets, every state a CPU can observe while the stores propagate
    /// (an entry word from one state, a literal from the same or a later
    /// one) behaves as the old target or the new one.
    #[test]
    fn every_intermediate_state_behaves_as_old_or_new() {
        for from in targets() {
            for to in targets() {
                let old = plan(TRAMP, from, STUB);
                let new = plan(TRAMP, to, STUB);
                let (old_fx, new_fx) = (execute(&old, &old), execute(&new, &new));
                for (name, p) in plans(&old, &new) {
                    let states: Vec<Image> = core::iter::once(old).chain(p.states(old)).collect();
                    assert_eq!(*states.last().unwrap(), new, "{name}: {from:#x}->{to:#x}");
                    for (i, entry_state) in states.iter().enumerate() {
                        for literal_state in &states[i..] {
                            let fx = execute(entry_state, literal_state);
                            assert!(
                                fx == old_fx || fx == new_fx,
                                "{name} {from:#x}->{to:#x}: state {i} {entry_state:x?} \
                                 with literal {:#x} does {fx:?}",
                                literal_state.literal
                            );
                        }
                        // A reader without the lock sees the old or new target.
                        let seen =
                            super::super::layout::current_target(TRAMP, entry_state, STUB).unwrap();
                        assert!(seen == from || seen == to, "{name}: query saw {seen:#x}");
                    }
                }
            }
        }
    }

    /// Batching: the stores of every trampoline's plan fall in phases in
    /// the plan's own order, so running phase after phase (with a sync
    /// after each) makes each trampoline go through exactly the states of
    /// its own plan, and every state a CPU can see between two syncs is
    /// one the single-trampoline proof above covers.
    #[test]
    fn batched_phases_keep_each_plans_order() {
        for from in targets() {
            for to in targets() {
                let (old, new) = (plan(TRAMP, from, STUB), plan(TRAMP, to, STUB));
                let p = breakpoint(&old, &new);
                let phases: Vec<usize> = p.stores().iter().map(|s| phase(*s)).collect();
                assert!(phases.windows(2).all(|w| w[0] < w[1]), "{phases:?}");
                assert!(phases.iter().all(|&ph| ph < PHASES));
            }
        }
    }

    /// What an update that failed and could not undo itself leaves: any
    /// state its plan passes through, forwards or while undoing, then the
    /// same again from there for the next update. Each is recognised as a
    /// key's unfinished state, and where a call goes is what `recognise`
    /// says; an `int3` state of a key not marked unfinished is refused.
    #[test]
    fn every_state_a_failed_update_leaves_is_recognised() {
        let effect_of = |target: u64| {
            if target == 0 {
                Effect::Return
            } else {
                Effect::Jump(target)
            }
        };
        let mut armed_refused = 0;
        for a in targets() {
            for b in targets() {
                let (old, new) = (plan(TRAMP, a, STUB), plan(TRAMP, b, STUB));
                for (_, p) in plans(&old, &new) {
                    let left: Vec<Image> = core::iter::once(old).chain(p.states(old)).collect();
                    for start in &left {
                        let reaches = recognise(TRAMP, start, STUB, true).unwrap();
                        assert_eq!(execute(start, start), effect_of(reaches), "{start:x?}");
                        if start.entry[0] == INT3 {
                            assert!(recognise(TRAMP, start, STUB, false).is_err());
                            armed_refused += 1;
                        }
                        // The next update, from there, to any target.
                        for c in targets() {
                            let to = plan(TRAMP, c, STUB);
                            for (_, q) in plans(start, &to) {
                                assert_eq!(q.states(*start).last().unwrap_or(*start), to);
                                for state in q.states(*start) {
                                    let r = recognise(TRAMP, &state, STUB, true).unwrap();
                                    let fx = execute(&state, &state);
                                    assert_eq!(fx, effect_of(r), "{state:x?}");
                                    assert!(
                                        [execute(start, start), effect_of(c)].contains(&fx),
                                        "{start:x?} -> {c:#x}: {state:x?} does {fx:?}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(armed_refused > 0);
    }

    #[test]
    fn the_breakpoint_plan_is_text_poke_bp() {
        let old = plan(TRAMP, TRAMP + 0x1000, STUB);
        let new = plan(TRAMP, TRAMP + 0x2000, STUB);
        let p = breakpoint(&old, &new);
        let mut armed = new.entry;
        armed[0] = INT3;
        assert_eq!(
            p.stores(),
            [
                Store::Literal(new.literal),
                Store::First(INT3),
                Store::Entry(armed),
                Store::First(JMP_REL32),
            ]
        );
        // The literal is published before the int3 that makes the handler
        // read it.
        let int3_at = p.stores().iter().position(|s| *s == Store::First(INT3));
        assert_eq!(int3_at, Some(1));
    }

    #[test]
    fn the_atomic_plan_is_at_most_two_aligned_stores() {
        for from in targets() {
            for to in targets() {
                let (old, new) = (plan(TRAMP, from, STUB), plan(TRAMP, to, STUB));
                let p = atomic_store(&old, &new);
                assert!(p.stores().len() <= 2);
                assert!(p.stores().iter().all(|s| s.bytes().1 == 8));
                // The literal always goes first: the far form reads it.
                if let [_, second] = p.stores() {
                    assert!(matches!(second, Store::Entry(_)));
                }
            }
        }
    }

    #[test]
    fn far_to_far_only_changes_the_literal() {
        let old = plan(TRAMP, TRAMP + (8 << 30), STUB);
        let new = plan(TRAMP, TRAMP + (9 << 30), STUB);
        for (_, p) in plans(&old, &new) {
            assert_eq!(p.stores(), [Store::Literal(new.literal)]);
        }
    }

    #[test]
    fn nothing_to_do_is_an_empty_plan() {
        let image = plan(TRAMP, TRAMP + 64, STUB);
        for (_, p) in plans(&image, &image) {
            assert!(p.stores().is_empty());
        }
    }

    #[test]
    fn undoing_every_store_in_reverse_restores_the_original() {
        for from in targets() {
            for to in targets() {
                let (old, new) = (plan(TRAMP, from, STUB), plan(TRAMP, to, STUB));
                for (_, p) in plans(&old, &new) {
                    for stop in 0..=p.stores().len() {
                        // Apply the first `stop` stores, then undo them.
                        let mut befores = Vec::new();
                        let mut image = old;
                        for s in &p.stores()[..stop] {
                            befores.push((*s, image));
                            image = s.apply(image);
                        }
                        for (s, before) in befores.iter().rev() {
                            image = s.undo(before).apply(image);
                            let fx = execute(&image, &image);
                            let ok = [execute(&old, &old), execute(&new, &new)];
                            assert!(ok.contains(&fx));
                        }
                        assert_eq!(image, old);
                    }
                }
            }
        }
        // Decoding still agrees after a round trip.
        let old = plan(TRAMP, TRAMP + 64, STUB);
        assert!(decode(TRAMP, &old, STUB).is_ok());
    }
}

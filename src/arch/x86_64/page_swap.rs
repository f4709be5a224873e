//! The page-swap strategy ([`Strategy::PageSwap`]): a whole update in one
//! step of a writer that publishes whole pages.
//!
//! Every store of the update (each trampoline's entry word and literal,
//! each inline site of each key) goes to the writer in one address-ordered
//! batch; the writer patches a private copy of each page and swaps it in
//! once (`writer::linux::Remap`: `mremap`, whose TLB
//! shootdown reaches every CPU running the process); then one
//! `sync_cores`. No byte a CPU may be fetching is ever modified: a CPU
//! runs the old page or the new one. So nothing here is cross-modifying
//! code in the sense of the Intel SDM (Vol. 3A §9.1.3, "Handling Self- and
//! Cross-Modifying Code"): no `int3`, no trap handler, no intermediate
//! state. Pages swap one at a time, so during the update some of the
//! update's pages may be new and others old: each trampoline and each site
//! is then old or new, and every combination calls the old target or the
//! new one (a site that calls its trampoline follows whichever the
//! trampoline is).
//!
//! On failure (a write, the read-back or the sync), everything is put
//! back the same way, in one more batch and sync.
//!
//! [`Strategy::PageSwap`]: super::Strategy::PageSwap

use super::layout::{self, Form, Image};
use crate::Error;
use crate::writer::TextPatch;

/// The image a rollback puts back for a trampoline that held `old`: `old`
/// itself, with the literal a never-updated trampoline lacks (0, as
/// assembled) filled in with where its entry goes. Neither near nor NULL
/// entries read the literal, so the two behave alike; and no image this
/// crate writes puts a 0 literal back (a CPU that fetched a far entry
/// would jump to address 0 through it).
///
/// ```
/// use static_call::arch::x86_64::{Image, page_swap::with_literal, plan};
/// let (tramp, f, stub) = (0x1000, 0x2000, 0x3000);
/// let near = plan(tramp, f, stub);
/// let as_assembled = Image { literal: 0, ..near };
/// assert_eq!(with_literal(tramp, &as_assembled, stub), Ok(near));
/// assert_eq!(with_literal(tramp, &near, stub), Ok(near));
/// ```
pub fn with_literal(tramp: u64, old: &Image, stub: u64) -> Result<Image, Error> {
    if old.literal != 0 {
        return Ok(*old);
    }
    let literal = match layout::decode(tramp, old, stub)?.form {
        Form::Near(dest) => dest,
        Form::Null => stub,
        // `decode` refuses a far entry without a literal.
        Form::Far => return Ok(*old),
    };
    Ok(Image { literal, ..*old })
}

/// Two address-ordered streams of patches as one address-ordered stream,
/// so that the writer sees each page's patches together and copies and
/// swaps each page once.
///
/// ```
/// use static_call::{arch::x86_64::page_swap::Merged, writer::TextPatch};
/// let p = |a| TextPatch::new(a, &[0; 8]);
/// let addrs: Vec<usize> = Merged::new([p(8), p(40)].into_iter(), [p(0), p(16), p(48)].into_iter())
///     .map(|p| p.addr)
///     .collect();
/// assert_eq!(addrs, [0, 8, 16, 40, 48]);
/// ```
pub struct Merged<A: Iterator<Item = TextPatch>, B: Iterator<Item = TextPatch>> {
    a: core::iter::Peekable<A>,
    b: core::iter::Peekable<B>,
}

impl<A: Iterator<Item = TextPatch>, B: Iterator<Item = TextPatch>> Merged<A, B> {
    /// Merges `a` and `b`, each in address order.
    pub fn new(a: A, b: B) -> Self {
        Merged {
            a: a.peekable(),
            b: b.peekable(),
        }
    }
}

impl<A: Iterator<Item = TextPatch>, B: Iterator<Item = TextPatch>> Iterator for Merged<A, B> {
    type Item = TextPatch;

    fn next(&mut self) -> Option<TextPatch> {
        match (self.a.peek(), self.b.peek()) {
            (Some(x), Some(y)) if y.addr < x.addr => self.b.next(),
            (Some(_), _) => self.a.next(),
            (None, _) => self.b.next(),
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use live::batch;

#[cfg(target_arch = "x86_64")]
mod live {
    use super::super::batch_sites::{BatchSites, SiteWords};
    use super::super::breakpoint::BATCH_MAX;
    use super::super::layout::{self, Image, LITERAL_OFFSET};
    use super::super::live::{conclude, lost, read_image};
    use super::super::{Slot, null_stub_addr};
    use super::{Merged, with_literal};
    use crate::arch::BatchItem;
    use crate::writer::{TextPatch, Watched};
    use crate::{Error, TextWriter};

    /// What [`Error::RestoreFailed`] reports when putting the update back
    /// failed.
    const NOT_RESTORED: &str = "a page-swap update failed and putting it back failed too: each \
        trampoline and inline site of the update holds its old or its new bytes (every call \
        reaches the old target or the new one); query() reports where a call of the trampoline \
        now goes, and the key's next update, with a writer that works, completes it";

    /// Retargets `n` keys (at most [`BATCH_MAX`]) in one page-swap step,
    /// then records each key's outcome in its slot.
    ///
    /// # Safety
    ///
    /// Every item is a key's live trampoline and slot, its target one of
    /// the key's type (or 0 where NULL is allowed); the writer publishes
    /// whole pages; the caller holds the patch lock.
    pub(in super::super) unsafe fn batch<'b>(
        n: usize,
        item: &dyn Fn(usize) -> BatchItem<'b, Slot>,
        writer: &dyn TextWriter,
    ) -> Result<(), (usize, Error)> {
        let writer = Watched::new(writer);
        // SAFETY: forwarded from the caller.
        let result = unsafe { step(n, item, &writer) };
        let outcome = result.map_err(|(_, e)| e);
        for i in 0..n {
            let it = item(i);
            // SAFETY: the caller's live trampolines; the lock is held.
            unsafe { conclude(it.tramp, it.slot, it.target, &writer, &outcome) };
        }
        result
    }

    /// The patches that take each trampoline from what it holds to
    /// `to[i]`, in address order, and how many there are.
    fn trampoline_patches<'b>(
        n: usize,
        item: &dyn Fn(usize) -> BatchItem<'b, Slot>,
        to: &[Image; BATCH_MAX],
    ) -> ([TextPatch; 2 * BATCH_MAX], usize) {
        let mut out = [TextPatch::new(0, &[]); 2 * BATCH_MAX];
        let mut k = 0;
        for (i, want) in to.iter().enumerate().take(n) {
            let tramp = item(i).tramp;
            // SAFETY: checked aligned; a live trampoline (the callers'
            // contract).
            let now = unsafe { read_image(tramp) };
            if now.entry != want.entry {
                out[k] = TextPatch::new(tramp, &want.entry);
                k += 1;
            }
            if now.literal != want.literal {
                out[k] = TextPatch::new(tramp + LITERAL_OFFSET, &want.literal.to_le_bytes());
                k += 1;
            }
        }
        out[..k].sort_unstable_by_key(|p| p.addr);
        (out, k)
    }

    /// The update itself: checks, one batch, read-back, one sync; on
    /// failure, the same back.
    ///
    /// # Safety
    ///
    /// As for [`batch`].
    unsafe fn step<'b>(
        n: usize,
        item: &dyn Fn(usize) -> BatchItem<'b, Slot>,
        writer: &dyn TextWriter,
    ) -> Result<(), (usize, Error)> {
        let stub = null_stub_addr();
        let mut olds = [Image::from_words(0, 0); BATCH_MAX];
        let mut news = olds;
        let mut unfinished = false;
        for i in 0..n {
            let it = item(i);
            layout::check_alignment(it.tramp).map_err(|e| (i, e))?;
            it.slot.check_text_kept(it.tramp).map_err(|e| (i, e))?;
            // SAFETY: the caller passes live trampolines; aligned.
            let now = unsafe { read_image(it.tramp) };
            let left = it.slot.is_unfinished();
            unfinished |= left;
            layout::recognise(it.tramp as u64, &now, stub, left).map_err(|e| (i, e))?;
            olds[i] = with_literal(it.tramp as u64, &now, stub).map_err(|e| (i, e))?;
            news[i] = layout::plan(it.tramp as u64, it.target as u64, stub);
        }
        // Every site is checked before anything is written.
        let sites = BatchSites::of(n, item)?;
        if unfinished {
            // What a failed update left reaches every CPU before anything
            // changes.
            writer.sync_cores().map_err(|e| (0, e))?;
        }
        let (tramps, k) = trampoline_patches(n, item, &news);
        let mut patches = Merged::new(
            tramps[..k].iter().copied(),
            sites
                .all()
                .filter(|s| s.now() != s.new)
                .map(|s| TextPatch::new(s.at, &s.new)),
        );
        // SAFETY: each patch is a whole aligned word of a trampoline or
        // inline site of a key being updated, checked above; the lock is
        // held.
        let written = unsafe { writer.write_batch(&mut patches) }.map_err(|e| (0, e));
        let done = written
            .and_then(|()| check(n, item, &news, &sites, |s| s.now() == s.new))
            .and_then(|()| writer.sync_cores().map_err(|e| (0, e)));
        let Err((i, e)) = done else {
            return Ok(());
        };
        if let Some(e) = lost(e) {
            return Err((i, e));
        }
        // SAFETY: as above.
        unsafe { put_back(n, item, &olds, &sites, writer) }.map_err(|r| (i, r))?;
        Err((i, e))
    }

    /// Whether every trampoline holds `images[i]` and every site passes
    /// `site_ok`; the first that does not, as [`Error::VerifyFailed`].
    fn check<'b>(
        n: usize,
        item: &dyn Fn(usize) -> BatchItem<'b, Slot>,
        images: &[Image; BATCH_MAX],
        sites: &BatchSites<'_, 'b>,
        site_ok: impl Fn(&SiteWords) -> bool,
    ) -> Result<(), (usize, Error)> {
        for (i, want) in images.iter().enumerate().take(n) {
            let tramp = item(i).tramp;
            // SAFETY: aligned and readable (checked before writing).
            if unsafe { read_image(tramp) } != *want {
                return Err((i, Error::VerifyFailed { addr: tramp }));
            }
        }
        match sites.keyed().find(|&(i, at)| !site_ok(&sites.words(i, at))) {
            Some((i, at)) => Err((i, Error::VerifyFailed { addr: at })),
            None => Ok(()),
        }
    }

    /// Puts every trampoline back to `olds[i]` and every site that does
    /// not behave as before to its call of the old target, in one batch,
    /// checks and syncs. Any failure is [`Error::RestoreFailed`] (or the
    /// writer's own, when it lost the text).
    ///
    /// # Safety
    ///
    /// As for [`batch`].
    unsafe fn put_back<'b>(
        n: usize,
        item: &dyn Fn(usize) -> BatchItem<'b, Slot>,
        olds: &[Image; BATCH_MAX],
        sites: &BatchSites<'_, 'b>,
        writer: &dyn TextWriter,
    ) -> Result<(), Error> {
        let failed = |addr| Error::RestoreFailed {
            addr,
            state: NOT_RESTORED,
        };
        let (tramps, k) = trampoline_patches(n, item, olds);
        let mut patches = Merged::new(
            tramps[..k].iter().copied(),
            sites
                .all()
                .filter(|s| !s.behaves_as_before(&s.now()))
                .map(|s| TextPatch::new(s.at, &s.old)),
        );
        // SAFETY: as in `step`.
        if let Err(e) = unsafe { writer.write_batch(&mut patches) } {
            return Err(lost(e).unwrap_or(failed(item(0).tramp)));
        }
        check(n, item, olds, sites, |s| s.behaves_as_before(&s.now())).map_err(
            |(_, e)| match e {
                Error::VerifyFailed { addr } => failed(addr),
                e => e,
            },
        )?;
        writer.sync_cores().map_err(|_| failed(item(0).tramp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::{NULL_ENTRY, plan};

    fn p(addr: usize) -> TextPatch {
        TextPatch::new(addr, &addr.to_le_bytes())
    }

    #[test]
    fn merging_keeps_address_order_and_every_patch() {
        let a = [p(0x1008), p(0x3000), p(0x3008)];
        let b = [p(0x1000), p(0x1010), p(0x2000), p(0x4000)];
        let mut merged = Merged::new(a.into_iter(), b.into_iter()).map(|p| p.addr);
        for want in [0x1000, 0x1008, 0x1010, 0x2000, 0x3000, 0x3008, 0x4000] {
            assert_eq!(merged.next(), Some(want));
        }
        assert_eq!(merged.next(), None);
        assert_eq!(Merged::new([].into_iter(), b.into_iter()).count(), 4);
        assert_eq!(Merged::new(a.into_iter(), [].into_iter()).count(), 3);
    }

    #[test]
    fn a_rollback_never_puts_a_zero_literal_back() {
        let (tramp, stub) = (0x10_0000u64, 0x20_0000u64);
        for target in [0, 0x10_4000, 0x7fff_0000_0000] {
            let published = plan(tramp, target, stub);
            assert_ne!(published.literal, 0);
            assert_eq!(with_literal(tramp, &published, stub), Ok(published));
        }
        let null = Image {
            entry: NULL_ENTRY,
            literal: 0,
        };
        assert_eq!(
            with_literal(tramp, &null, stub).map(|i| i.literal),
            Ok(stub)
        );
        // Bytes that are no trampoline are refused, not guessed at.
        let junk = Image {
            entry: [0x90; 8],
            literal: 0,
        };
        assert!(with_literal(tramp, &junk, stub).is_err());
    }
}

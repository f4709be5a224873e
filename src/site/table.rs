//! The call-site table: where every inline call site is, and whose it is.
//!
//! Each `K.call(..)` of an `extern "C"` key emits, beside its call
//! instruction, a record in the section `static_call_sites`: two 32-bit
//! offsets, the site's and the key's trampoline's, each relative to the
//! field that holds it, so the table needs no relocation at load time and
//! works in position-independent executables. The section is writable and
//! flagged `SHF_GNU_RETAIN`, so `--gc-sections` keeps it whether or not the
//! linker garbage-collects `__start_`/`__stop_` references (lld's
//! `-z start-stop-gc`); the crate adds one empty record of its own so the
//! section, and the linker's `__start_static_call_sites` and
//! `__stop_static_call_sites`, exist in every program.
//!
//! Before its first use, under the patch lock, the table is rewritten in
//! place: offsets become relative to the table's start and the records are
//! sorted by site address. From then on it is only read, except that a
//! record can be forgotten (its text freed); the `int3` handler finds a
//! site by binary search, without locks or allocation.
//!
//! The logic is over a plain slice and its address ([`Records`]), so it is
//! tested on every host; [`live`] binds it to the linked section.

// With the generic backend nothing patches sites: the table is built (the
// architecture's patching code still compiles) but partly unused.
#![cfg_attr(static_call_backend = "generic", allow(dead_code))]

use crate::Error;
use core::sync::atomic::{AtomicI32, Ordering};

/// One record as the linker leaves it and as the table keeps it.
#[repr(C)]
#[derive(Debug)]
pub struct Record {
    site: AtomicI32,
    tramp: AtomicI32,
}

/// A forgotten record's trampoline offset (after preparation), or an empty
/// record's (as linked: a trampoline offset of 0 names the record itself).
const FORGOTTEN: i32 = i32::MIN;

impl Record {
    /// A record as the assembler emits it, for tests: offsets relative to
    /// its own fields.
    #[cfg(test)]
    pub const fn raw(site: i32, tramp: i32) -> Self {
        Record {
            site: AtomicI32::new(site),
            tramp: AtomicI32::new(tramp),
        }
    }
}

/// A table of records at a known address.
#[derive(Debug, Clone, Copy)]
pub struct Records<'a> {
    records: &'a [Record],
}

impl<'a> Records<'a> {
    /// The records of `records`, which sit at their own address.
    pub fn new(records: &'a [Record]) -> Self {
        Records { records }
    }

    fn base(&self) -> usize {
        self.records.as_ptr() as usize
    }

    /// Rewrites the records as the linker left them (self-relative) into
    /// the table's own form (relative to its start), sorted by site. An
    /// empty record (trampoline offset 0) becomes a forgotten one.
    ///
    /// Fails, changing nothing, if a site or trampoline is more than 2 GiB
    /// from the table: it would not fit the table's form.
    ///
    /// Must run once, before any other use, with no other access to the
    /// records (the patch lock held, the table not yet published).
    pub fn prepare(&self) -> Result<(), Error> {
        let base = self.base();
        let rebased = |r: &Record, i: usize| -> Result<(i32, i32), Error> {
            let at = base + i * core::mem::size_of::<Record>();
            let site = at.wrapping_add_signed(r.site.load(Ordering::Relaxed) as isize);
            let raw_tramp = r.tramp.load(Ordering::Relaxed);
            let out_of_range = Error::UnrecognisedCallSite {
                site,
                found: raw_tramp as u32 as u64,
            };
            let rel = |addr: usize| i32::try_from(addr.wrapping_sub(base) as isize).ok();
            let site_rel = rel(site).ok_or(out_of_range)?;
            if raw_tramp == 0 {
                return Ok((site_rel, FORGOTTEN));
            }
            let tramp = (at + 4).wrapping_add_signed(raw_tramp as isize);
            match rel(tramp) {
                Some(t) if t != FORGOTTEN => Ok((site_rel, t)),
                _ => Err(out_of_range),
            }
        };
        for (i, r) in self.records.iter().enumerate() {
            rebased(r, i)?;
        }
        for (i, r) in self.records.iter().enumerate() {
            let (s, t) = rebased(r, i)?;
            r.site.store(s, Ordering::Relaxed);
            r.tramp.store(t, Ordering::Relaxed);
        }
        // In place and without allocating: a heap sort that swaps the
        // records' loaded values.
        heap_sort(self.records);
        Ok(())
    }

    /// The site of record `i` and its trampoline (`None` if forgotten).
    fn get(&self, i: usize) -> (usize, Option<usize>) {
        let r = &self.records[i];
        let site = self
            .base()
            .wrapping_add_signed(r.site.load(Ordering::Relaxed) as isize);
        let tramp = r.tramp.load(Ordering::Relaxed);
        let tramp = (tramp != FORGOTTEN).then(|| self.base().wrapping_add_signed(tramp as isize));
        (site, tramp)
    }

    /// Every live site and its key's trampoline, in site address order.
    pub fn all(&self) -> impl Iterator<Item = (usize, usize)> + Clone + 'a {
        let this = *self;
        (0..self.records.len()).filter_map(move |i| match this.get(i) {
            (site, Some(t)) => Some((site, t)),
            _ => None,
        })
    }

    /// The sites of the key whose trampoline is at `tramp`, in address
    /// order.
    pub fn sites_of(&self, tramp: usize) -> impl Iterator<Item = usize> + Clone + 'a {
        self.all()
            .filter_map(move |(s, t)| (t == tramp).then_some(s))
    }

    /// The trampoline of the key whose site is at `site`, if `site` is a
    /// live site: a binary search, without locks or allocation (for the
    /// x86-64 `int3` handler).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fn find(&self, site: usize) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.records.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (s, tramp) = self.get(mid);
            match s.cmp(&site) {
                core::cmp::Ordering::Less => lo = mid + 1,
                core::cmp::Ordering::Greater => hi = mid,
                core::cmp::Ordering::Equal => return tramp,
            }
        }
        None
    }

    /// Forgets every site in `range`: no update touches them again.
    /// Returns how many were forgotten.
    pub fn forget(&self, range: core::ops::Range<usize>) -> usize {
        let mut n = 0;
        for (i, r) in self.records.iter().enumerate() {
            let (site, tramp) = self.get(i);
            if tramp.is_some() && range.contains(&site) {
                r.tramp.store(FORGOTTEN, Ordering::Relaxed);
                n += 1;
            }
        }
        n
    }
}

/// Sorts prepared records by site, in place, without allocating.
fn heap_sort(records: &[Record]) {
    let key = |i: usize| records[i].site.load(Ordering::Relaxed);
    let swap = |a: usize, b: usize| {
        let (ra, rb) = (&records[a], &records[b]);
        let (sa, ta) = (
            ra.site.load(Ordering::Relaxed),
            ra.tramp.load(Ordering::Relaxed),
        );
        ra.site
            .store(rb.site.load(Ordering::Relaxed), Ordering::Relaxed);
        ra.tramp
            .store(rb.tramp.load(Ordering::Relaxed), Ordering::Relaxed);
        rb.site.store(sa, Ordering::Relaxed);
        rb.tramp.store(ta, Ordering::Relaxed);
    };
    let sift_down = |mut root: usize, end: usize| {
        loop {
            let mut child = 2 * root + 1;
            if child >= end {
                break;
            }
            if child + 1 < end && key(child + 1) > key(child) {
                child += 1;
            }
            if key(root) >= key(child) {
                break;
            }
            swap(root, child);
            root = child;
        }
    };
    let n = records.len();
    for start in (0..n / 2).rev() {
        sift_down(start, n);
    }
    for end in (1..n).rev() {
        swap(0, end);
        sift_down(0, end);
    }
}

/// The table this program was linked with. Built wherever the
/// architecture's patching code is (with `force-generic` too, where
/// nothing patches sites but that code still compiles).
#[cfg(any(target_arch = "aarch64", target_arch = "x86_64"))]
pub mod live {
    use super::{Record, Records};
    use crate::Error;
    use core::sync::atomic::{AtomicU8, Ordering};

    // The crate's own empty record: the section exists in every program,
    // so the linker defines its bounds even where no key is called inline.
    core::arch::global_asm!(
        ".pushsection static_call_sites, \"awR\"",
        ".balign 4",
        ".long 0, 0",
        ".popsection",
    );

    unsafe extern "C" {
        #[link_name = "__start_static_call_sites"]
        static START: Record;
        #[link_name = "__stop_static_call_sites"]
        static STOP: Record;
    }

    const RAW: u8 = 0;
    const READY: u8 = 1;
    const BROKEN: u8 = 2;

    /// Whether the table has been prepared (Release when it is).
    static STATE: AtomicU8 = AtomicU8::new(RAW);

    fn records() -> Records<'static> {
        let start = &raw const START;
        let stop = &raw const STOP;
        let len = (stop as usize - start as usize) / core::mem::size_of::<Record>();
        // SAFETY: the linker places every record of the section between its
        // start and stop symbols, contiguously (each record is 4-aligned and
        // 8 bytes long); the section lives as long as the program, and all
        // access to it is atomic.
        Records::new(unsafe { core::slice::from_raw_parts(start, len) })
    }

    /// The table, prepared on first use.
    ///
    /// The caller must hold the patch lock (preparation rewrites it).
    pub fn locked() -> Result<Records<'static>, Error> {
        match STATE.load(Ordering::Acquire) {
            READY => return Ok(records()),
            BROKEN => {}
            _ => {
                let table = records();
                if table.prepare().is_ok() {
                    STATE.store(READY, Ordering::Release);
                    return Ok(table);
                }
                STATE.store(BROKEN, Ordering::Relaxed);
            }
        }
        // Prepare again to get the error: it changes nothing when it fails.
        records().prepare().map(|()| records())
    }

    /// The table if it has been prepared, for the `int3` handler and
    /// counts: no lock, no allocation, atomic loads only.
    pub fn published() -> Option<Records<'static>> {
        (STATE.load(Ordering::Acquire) == READY).then(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// Records as the assembler would emit them for `(site, tramp)`
    /// absolute addresses, given where the table will sit.
    fn emit(table: &[Record], entries: &[(usize, Option<usize>)]) {
        let base = table.as_ptr() as usize;
        for (i, (r, &(site, tramp))) in table.iter().zip(entries).enumerate() {
            let at = base + 8 * i;
            r.site
                .store(site.wrapping_sub(at) as i32, Ordering::Relaxed);
            let t = tramp.map_or(0, |t| t.wrapping_sub(at + 4) as i32);
            r.tramp.store(t, Ordering::Relaxed);
        }
    }

    fn table_of(n: usize) -> Vec<Record> {
        (0..n).map(|_| Record::raw(0, 0)).collect()
    }

    #[test]
    fn prepared_tables_are_sorted_and_answer_by_key_and_by_site() {
        let t = table_of(7);
        let base = t.as_ptr() as usize;
        let (ka, kb) = (base + 0x10_000, base + 0x20_000);
        let sites = [0x500, 0x100, 0x300, 0x200, 0x400, 0x600];
        let mut entries: Vec<_> = sites
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                (
                    base.wrapping_sub(0x8000) + s,
                    Some(if i % 2 == 0 { ka } else { kb }),
                )
            })
            .collect();
        entries.push((base + 48, None)); // the crate's empty record
        emit(&t, &entries);
        let r = Records::new(&t);
        r.prepare().unwrap();
        let order: Vec<_> = (0..t.len()).map(|i| r.get(i).0).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:x?}");
        let of_a: Vec<_> = r.sites_of(ka).collect();
        let want_a: Vec<_> = [0x300, 0x400, 0x500]
            .iter()
            .map(|s| base.wrapping_sub(0x8000) + s)
            .collect();
        assert_eq!(of_a, want_a);
        assert_eq!(r.sites_of(kb).count(), 3);
        for &(site, tramp) in &entries {
            assert_eq!(r.find(site), tramp, "site {site:#x}");
        }
        assert_eq!(r.find(base.wrapping_sub(0x8000) + 0x101), None);
        assert_eq!(r.find(0), None);
    }

    #[test]
    fn forgotten_sites_are_neither_patched_nor_found() {
        let t = table_of(4);
        let base = t.as_ptr() as usize;
        let k = base + 0x4000;
        let sites = [base + 0x1000, base + 0x1008, base + 0x2000, base + 0x2008];
        let entries: Vec<_> = sites.iter().map(|&s| (s, Some(k))).collect();
        emit(&t, &entries);
        let r = Records::new(&t);
        r.prepare().unwrap();
        assert_eq!(r.forget(base + 0x2000..base + 0x3000), 2);
        assert_eq!(r.forget(base + 0x2000..base + 0x3000), 0);
        assert_eq!(r.sites_of(k).collect::<Vec<_>>(), sites[..2]);
        assert_eq!(r.find(sites[2]), None);
        assert_eq!(r.find(sites[1]), Some(k));
    }

    #[test]
    fn a_table_out_of_reach_is_refused_unchanged() {
        let t = table_of(2);
        let base = t.as_ptr() as usize;
        emit(
            &t,
            &[
                (base + 0x100, Some(base + 0x200)),
                (base + 0x300, Some(base + 0x400)),
            ],
        );
        // A trampoline offset that lands exactly on the forgotten marker.
        t[1].tramp
            .store(FORGOTTEN.wrapping_sub(12), Ordering::Relaxed);
        let before: Vec<_> = t
            .iter()
            .map(|r| {
                (
                    r.site.load(Ordering::Relaxed),
                    r.tramp.load(Ordering::Relaxed),
                )
            })
            .collect();
        let r = Records::new(&t);
        assert!(matches!(
            r.prepare(),
            Err(Error::UnrecognisedCallSite { .. })
        ));
        let after: Vec<_> = t
            .iter()
            .map(|r| {
                (
                    r.site.load(Ordering::Relaxed),
                    r.tramp.load(Ordering::Relaxed),
                )
            })
            .collect();
        assert_eq!(before, after);
    }

    #[test]
    fn heap_sort_sorts_every_permutation_of_six() {
        let mut perm: Vec<i32> = (0..6).collect();
        // Heap's algorithm over all 720 permutations.
        fn each(k: usize, p: &mut Vec<i32>, f: &mut dyn FnMut(&[i32])) {
            if k == 1 {
                return f(p);
            }
            for i in 0..k {
                each(k - 1, p, f);
                let j = if k.is_multiple_of(2) { i } else { 0 };
                p.swap(j, k - 1);
            }
        }
        let mut count = 0;
        each(6, &mut perm, &mut |p| {
            let t: Vec<_> = p.iter().map(|&s| Record::raw(s * 8, s)).collect();
            heap_sort(&t);
            let sites: Vec<_> = t.iter().map(|r| r.site.load(Ordering::Relaxed)).collect();
            let tramps: Vec<_> = t.iter().map(|r| r.tramp.load(Ordering::Relaxed)).collect();
            assert_eq!(sites, (0..6).map(|s| s * 8).collect::<Vec<_>>());
            assert_eq!(tramps, (0..6).collect::<Vec<_>>(), "records move whole");
            count += 1;
        });
        assert_eq!(count, 720);
    }
}

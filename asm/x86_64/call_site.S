# The x86-64 inline call site: what every call of an `extern "C"` key
# assembles to. static_call! splices the lines below (not these comments)
# into the call's asm! block. Operands: `tramp`, the key's trampoline (the
# record names it); `target`, what the site calls as assembled; `null`, 1
# for a NULL key's site. Where the key's definition is visible (the
# defining crate, and anything its methods are inlined into) `target` is
# the initial target itself (the return-zero function for RET0) and a
# NULL key's site is the no-op, so a key that is never updated costs a
# direct call; through declare_static_call! `target` is the trampoline.
# AT&T syntax.
#
# The site is one aligned 8-byte word: three cs prefixes (ignored in 64-bit
# mode) then call rel32. So the rel32 is 4-byte aligned and never crosses
# a cache line, and one aligned 8-byte store replaces the whole instruction
# (the one-store strategy). Updates write `call target`, `call trampoline`
# (a target out of rel32 reach) or an 8-byte nop (NULL) there, with the same
# prefixes; the int3 protocol traps on the first byte.
#
# The alignment is filled with more cs prefixes, not a nop: they become
# part of the site's instruction (at most 7 + 8 = 15 bytes, the longest
# x86 instruction), so a call through the site executes one instruction,
# as a direct call does, instead of a nop and the call (in a tight loop of
# calls the nop cost a sixth more per call; prefixes cost nothing there).
# Only the site's own 8 bytes are ever patched; the padding stays. So the
# int3 protocol's 0xcc lands after the padding: a CPU decodes the padding
# and the 0xcc as one int3 with ignored prefixes, which traps with %rip
# just past the 0xcc, at the site + 1, as an int3 without them would; no
# branch targets the site itself.
#
# The record beside it says where the site is and whose it is (offsets from
# the record's own fields; src/site/table.rs).
	.balign	8, 0x2e
9:
	.if	{null}
	.byte	0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00
	.else
	.byte	0x2e, 0x2e, 0x2e
	call	{target}
	.endif
	.pushsection static_call_sites, "awR"
	.balign	4
	.long	9b - .
	.long	{tramp} - .
	.popsection

// The arm64 inline call site: what every call of an `extern "C"` key
// assembles to. static_call! splices the lines below (not these comments)
// into the call's asm! block. Operands: `tramp`, the key's trampoline (the
// record names it); `target`, what the site calls as assembled; `null`, 1
// for a NULL key's site. Where the key's definition is visible (the
// defining crate, and anything its methods are inlined into) `target` is
// the initial target itself (the return-zero function for RET0) and a
// NULL key's site is `nop`, so a key that is never updated costs a direct
// call; through declare_static_call! `target` is the trampoline.
//
// Updates write `bl target`, `bl trampoline` (a target out of bl reach) or
// `nop` (NULL) there: only BL and NOP are ever exchanged, each one aligned
// 32-bit store. The record beside it says where the site is and whose it
// is (offsets from the record's own fields; src/site/table.rs).
9:
	.if	{null}
	nop
	.else
	bl	{target}
	.endif
	.pushsection static_call_sites, "awR"
	.balign	4
	.long	9b - .
	.long	{tramp} - .
	.popsection

// The arm64 inline call site: what every call of an `extern "C"` key
// assembles to. static_call! splices the lines below (not these comments)
// into the call's asm! block, whose operand `tramp` is the key's
// trampoline.
//
// Updates write `bl target`, `bl trampoline` (a target out of bl reach) or
// `nop` (NULL) there: only BL and NOP are ever exchanged, each one aligned
// 32-bit store. The record beside it says where the site is and whose it
// is (offsets from the record's own fields; src/site/table.rs).
9:	bl	{tramp}
	.pushsection static_call_sites, "awR"
	.balign	4
	.long	9b - .
	.long	{tramp} - .
	.popsection

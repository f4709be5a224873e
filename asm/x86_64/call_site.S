# The x86-64 inline call site: what every call of an `extern "C"` key
# assembles to. static_call! splices the lines below (not these comments)
# into the call's asm! block, whose operand `tramp` is the key's
# trampoline. AT&T syntax.
#
# The call is one aligned 8-byte word: three cs prefixes (ignored in 64-bit
# mode) then call rel32. So the rel32 is 4-byte aligned and never crosses
# a cache line, and one aligned 8-byte store replaces the whole instruction
# (the one-store strategy). Updates write `call target`, `call trampoline`
# (a target out of rel32 reach) or an 8-byte nop (NULL) there, with the same
# prefixes; the int3 protocol traps on the first byte.
#
# The record beside it says where the site is and whose it is (offsets from
# the record's own fields; src/site/table.rs).
	.balign	8
9:	.byte	0x2e, 0x2e, 0x2e
	call	{tramp}
	.pushsection static_call_sites, "awR"
	.balign	4
	.long	9b - .
	.long	{tramp} - .
	.popsection

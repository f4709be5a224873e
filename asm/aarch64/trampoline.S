// The arm64 static-call trampoline: the single source every key's
// trampoline is assembled from. `static_call!` expands it once per key:
//
//     static_call_trampoline NAME, NULL, TARGET
//
// NULL = 1 emits a NULL key (zero literal, nop: a call returns at once);
// otherwise TARGET is the initial target (PC-relative `b`, no relocation
// left for the loader). Layout and patch protocol are described in
// src/arch/aarch64/mod.rs; only the literal and the word after `bti c` are
// ever rewritten, as two aligned 64-bit stores.
.macro static_call_trampoline name:req, null:req, target:req
	.pushsection .static_call.text, "ax", %progbits
	.balign	16			// literal + [bti c | branch] share 16 bytes
0:	.quad	0			// 0 until the first update: an absolute
					// address here would be a text relocation
					// in a PIE; the `b` below is authoritative
	.globl	\name
	.type	\name, %function
\name:
	hint	#34			// BTI C: the entry may be reached by BLR
.if \null
	nop
.else
	b	\target			// patched: B when in reach, else NOP
.endif
	ldr	x16, 0b
	cbz	x16, 1f			// NULL literal: return, never branch to 0
	br	x16			// x16: BTI C targets accept BR x16
1:	ret
	.size	\name, . - \name
	.popsection
.endm

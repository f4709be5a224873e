# The x86-64 static-call trampoline: the single source every key's
# trampoline is assembled from (AT&T syntax). static_call! expands it once
# per key:
#
#     static_call_trampoline NAME, NULL, TARGET
#
# NULL = 1 emits a NULL key (ret, int3 padding); otherwise TARGET is the
# initial target of a jmp.d32. The first 8 bytes (the entry word) are the
# only code ever patched, with aligned stores; the literal after them is
# written by every update. The assembler leaves it 0: an absolute address
# here would be a text relocation in a position-independent executable.
# NAME.indirect, after it, is the entry the key's function pointer uses.
# Layout and protocols: src/arch/x86_64/mod.rs.
.macro static_call_trampoline name:req, null:req, target:req
	.pushsection .static_call.text, "ax", @progbits
	.balign	16			# entry word and literal share 16 bytes
	.globl	\name
	.type	\name, @function
\name:
.if \null
	ret
	int3
	int3
	int3
	int3
.else
	jmp	\target			# e9 rel32: the target is in another
					# section, so it is never shortened
.endif
	.byte	0x0f, 0xb9, 0xcc	# ud1 %esp, %ecx: speculation stop, signature
	.quad	0			# the literal
	.size	\name, . - \name
# The entry for indirect calls (the key's function pointer): with CET
# indirect branch tracking an indirect call must land on endbr64. It sits
# apart so that direct calls run the patched word first and pay nothing.
	.globl	\name\().indirect
	.type	\name\().indirect, @function
\name\().indirect:
	endbr64
	jmp	\name
	.size	\name\().indirect, . - \name\().indirect
	.popsection
.endm

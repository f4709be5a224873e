// A shared library marked BTI-compatible, for the test that a writer keeps
// the guard of the page it rewrites (tests/aarch64_backend.rs). The harness
// assembles it with the aarch64 cross compiler and passes its path in
// STATIC_CALL_BTI_LIBRARY.
//
// On a guarded page an indirect call must land on a `bti c`: `with_pad`
// does, `no_pad` does not (calling it through a pointer raises SIGILL), and
// `scratch` is a word of the same page for the writer to rewrite.
    .text
    .balign 64
    .globl no_pad
    .type no_pad, %function
no_pad:
    mov x0, #1
    ret
    .size no_pad, . - no_pad

    .balign 16
    .globl with_pad
    .type with_pad, %function
with_pad:
    bti c
    mov x0, #2
    ret
    .size with_pad, . - with_pad

    .balign 8
    .globl scratch
    .type scratch, %object
scratch:
    .quad 0
    .size scratch, 8

// NT_GNU_PROPERTY_TYPE_0 with GNU_PROPERTY_AARCH64_FEATURE_1_AND = BTI: the
// marking the loader maps the text with PROT_BTI for.
    .section .note.gnu.property, "a"
    .balign 8
    .long 4             // name size
    .long 16            // descriptor size
    .long 5             // NT_GNU_PROPERTY_TYPE_0
    .asciz "GNU"
    .long 0xc0000000    // GNU_PROPERTY_AARCH64_FEATURE_1_AND
    .long 4             // its data size
    .long 1             // BTI
    .long 0             // padding to 8 bytes
    .section .note.GNU-stack, "", %progbits

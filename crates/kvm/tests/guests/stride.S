/*
 * stride.S: writes one byte in every `stride`-th page of a range, in rounds, for the dirty
 * log benchmark.
 *
 * Boot page (RDI): u64 first GPA, u64 stride in bytes, u64 page count. Each round writes
 * the round number at first + k * stride for k < count, then does `out` of the round
 * number to port 0x520; the VMM's handler returns when the next round may start. Uses no
 * stack, so it dirties no page but the ones it is told to.
 */
    .code64
    .text
    .globl _start
_start:
    mov     (%rdi), %r10            /* first */
    mov     8(%rdi), %r11           /* stride */
    mov     16(%rdi), %r12          /* count */
    xor     %r9d, %r9d              /* round */
round:
    inc     %r9
    mov     %r10, %rax
    mov     %r12, %rcx
write:
    mov     %r9b, (%rax)
    add     %r11, %rax
    dec     %rcx
    jnz     write
    mov     %r9d, %eax
    mov     $0x520, %dx
    out     %eax, %dx
    jmp     round

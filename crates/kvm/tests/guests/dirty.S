/*
 * dirty.S: writes the pages the VMM lists, in rounds, so a test can compare KVM's dirty
 * log with exactly those pages.
 *
 * Boot page (RDI): u64 rounds, then for each round a u64 count followed by that many u64
 * GPAs. For each round the guest writes one byte (the round number) at each GPA, then
 * does `out` of the round number to port 0x520; the VMM's handler returns when the test
 * is ready for the next round. After the last round it halts with interrupts off.
 * Uses no stack, so it dirties no page but the listed ones.
 */
    .code64
    .text
    .globl _start
_start:
    mov     (%rdi), %r8             /* rounds left */
    lea     8(%rdi), %rsi           /* cursor in the boot page */
    xor     %r9d, %r9d              /* round number */
round:
    test    %r8, %r8
    jz      halt
    inc     %r9
    mov     (%rsi), %rcx            /* pages in this round */
    add     $8, %rsi
write:
    test    %rcx, %rcx
    jz      done
    mov     (%rsi), %rax
    mov     %r9b, (%rax)
    add     $8, %rsi
    dec     %rcx
    jmp     write
done:
    mov     %r9d, %eax
    mov     $0x520, %dx
    out     %eax, %dx
    dec     %r8
    jmp     round
halt:
    cli
    hlt
    jmp     halt

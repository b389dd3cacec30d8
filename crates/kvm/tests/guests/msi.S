/*
 * msi.S: counts interrupts. Builds an IDT at GPA 0x20_0000 whose vector 0x40 entry points
 * at a handler that increments the u64 at GPA 0x9000 (the status page) and writes the
 * LAPIC's EOI register; software-enables the LAPIC (spurious vector register, bit 8);
 * writes 1 to GPA 0x9008 (ready: an MSI from now on is taken); then waits with
 * `sti; hlt` in a loop, so each interrupt wakes it from HLT.
 * The stack is the boot contract's (RSP set by the VMM).
 */
#define IDT 0x200000
#define VECTOR 0x40
#define STATUS_PAGE 0x9000
#define LAPIC 0xFEE00000
#define LAPIC_EOI 0xB0
#define LAPIC_SVR 0xF0

    .code64
    .text
    .globl _start
_start:
    /* IDT gate for VECTOR: 64-bit interrupt gate, selector 0x08, present, DPL 0. */
    lea     handler(%rip), %rax
    mov     $(IDT + VECTOR * 16), %rdi
    mov     %ax, (%rdi)             /* offset 15:0 */
    movw    $0x08, 2(%rdi)          /* code selector */
    movw    $0x8E00, 4(%rdi)        /* IST 0, type 0xE, present */
    shr     $16, %rax
    mov     %ax, 6(%rdi)            /* offset 31:16 */
    shr     $16, %rax
    mov     %eax, 8(%rdi)           /* offset 63:32 */
    movl    $0, 12(%rdi)
    lidt    idtr(%rip)

    mov     $LAPIC, %ebx
    mov     LAPIC_SVR(%rbx), %eax
    or      $0x1FF, %eax            /* enable, spurious vector 0xFF */
    mov     %eax, LAPIC_SVR(%rbx)
    movq    $1, STATUS_PAGE + 8

wait:
    sti
    hlt
    jmp     wait

handler:
    push    %rax
    incq    STATUS_PAGE
    mov     $LAPIC, %eax        /* zero-extended: the LAPIC is below 4 GiB */
    movl    $0, LAPIC_EOI(%rax)
    pop     %rax
    iretq

    .balign 8
idtr:
    .word   256 * 16 - 1
    .quad   IDT

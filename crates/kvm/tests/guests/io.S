/*
 * io.S: exercises every exit the run loop hands to its handler, in this order:
 *   1. out of EFER's low 32 bits to port 0x510 (the test checks LME|LMA: long mode);
 *   2. out of the vCPU index (RSI at entry) to port 0x511;
 *   3. in from port 0x512, plus one, out to port 0x513 (a PIO read reaches the guest);
 *   4. a 32-bit MMIO write of 0xC0FFEE to GPA 0xD000_0000;
 *   5. a 32-bit MMIO read of GPA 0xD000_0008, plus one, written to GPA 0xD000_0010;
 *   6. then halts forever with interrupts off.
 * Runs straight from the boot contract's long-mode entry; uses no stack.
 */
#define MSR_EFER 0xC0000080
#define MMIO_BASE 0xD0000000

    .code64
    .text
    .globl _start
_start:
    mov     %rsi, %r8               /* keep the vCPU index */

    mov     $MSR_EFER, %ecx
    rdmsr
    mov     $0x510, %dx
    out     %eax, %dx

    mov     %r8d, %eax
    mov     $0x511, %dx
    out     %eax, %dx

    mov     $0x512, %dx
    in      %dx, %eax
    inc     %eax
    mov     $0x513, %dx
    out     %eax, %dx

    mov     $MMIO_BASE, %ebx
    movl    $0xC0FFEE, (%rbx)
    mov     8(%rbx), %eax
    inc     %eax
    mov     %eax, 16(%rbx)

halt:
    cli
    hlt
    jmp     halt

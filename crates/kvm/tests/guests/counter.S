/*
 * counter.S: counts forever. vCPU i keeps its count in RBX and stores it, after each
 * increment, at GPA 0x9000 + 8 * i (the status page). The count lives in a register so
 * that a restored snapshot continues it only if the registers were restored too.
 * Uses no stack.
 */
#define STATUS_PAGE 0x9000

    .code64
    .text
    .globl _start
_start:
    lea     STATUS_PAGE(,%rsi,8), %rdi
    xor     %ebx, %ebx
count:
    inc     %rbx
    mov     %rbx, (%rdi)
    jmp     count

/*
 * Entry point and interrupt stubs.
 *
 * The VMM starts every vCPU here in 64-bit mode with RSP = its stack top, RDI = the boot page
 * GPA and RSI = its index (docs of the crate, "Boot contract").
 */
	.section .text.entry, "ax"
	.globl _start
_start:
	cld
	xor %ebp, %ebp
	call guest_main            /* guest_main(boot page, index) does not return */
1:	cli
	hlt
	jmp 1b

/*
 * One stub per vector. The CPU pushes an error code for vectors 8, 10-14, 17, 21, 29, 30;
 * the others push a zero so every frame is the same: vector, error code, rip, cs, rflags, rsp, ss.
 */
	.text
	.altmacro
.macro stub vec
	.align 16
stub_\vec:
	.if (\vec == 8) || (\vec >= 10 && \vec <= 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
	.else
	pushq $0
	.endif
	pushq $\vec
	jmp common_stub
.endm

	.set vec, 0
	.rept 256
	stub %vec
	.set vec, vec + 1
	.endr

/* Saves the registers a C function may clobber (and rbx, used here), calls interrupt(frame). */
common_stub:
	pushq %rax
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	pushq %rbx
	movq %rsp, %rdi            /* struct frame * */
	movq %rsp, %rbx
	andq $-16, %rsp            /* the ABI's stack alignment at the call */
	call interrupt
	movq %rbx, %rsp
	popq %rbx
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rax
	addq $16, %rsp             /* vector and error code */
	iretq

/* The address of each stub, for the IDT. */
.macro stub_address vec
	.quad stub_\vec
.endm

	.section .rodata
	.globl interrupt_stubs
	.align 8
interrupt_stubs:
	.set vec, 0
	.rept 256
	stub_address %vec
	.set vec, vec + 1
	.endr
	.section .note.GNU-stack, "", @progbits

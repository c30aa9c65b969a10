# irq: take %rcx interrupts (default 3) from the memexpose slot test device,
# waiting in hlt, then print a line and halt. The handler is IDT vector 32.
# Slot registers used: +0x0 (write: acknowledge). %r12 counts interrupts.
.include "pc.inc"
.code64
.global _start
.text
_start:
    test    %rcx, %rcx
    jnz     1f
    mov     $3, %rcx
1:  mov     %rcx, %rbx
    lea     irq_handler(%rip), %rax
    lea     idt + 32 * 16(%rip), %rdi
    mov     %ax, (%rdi)            # offset 15:0
    movw    $0x08, 2(%rdi)         # selector
    movw    $0x8e00, 4(%rdi)       # present, 64-bit interrupt gate
    shr     $16, %rax
    mov     %ax, 6(%rdi)           # offset 31:16
    shr     $16, %rax
    mov     %eax, 8(%rdi)          # offset 63:32
    lidt    idtr(%rip)
    xor     %r12, %r12
    sti
2:  hlt
    cmp     %rbx, %r12
    jb      2b
    cli
    lea     message(%rip), %rsi
    call    puts
    jmp     halt

irq_handler:                       # frame: RFLAGS, then the return RIP
    push    %rax
    mov     $SLOT_REGS, %eax
    movl    $1, (%rax)             # acknowledge: the device lowers its line
    inc     %r12
    pop     %rax
    popfq
    ret

.include "lib.s"

.section .rodata
message:
    .asciz  "irq: all interrupts handled\n"

.data
.balign 16
idtr:
    .word   33 * 16 - 1
    .quad   idt
.balign 16
idt:
    .skip   33 * 16

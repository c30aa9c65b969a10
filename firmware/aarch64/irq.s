// irq: take x3 interrupts (default 3) from the memexpose slot test device,
// waiting in wfi, then print a line and power off.
// Slot registers used: +0x0 (write: acknowledge), +0x4 (read: IRQ count).
// x20 counts the interrupts the handler saw.
.include "virt.inc"
.global _start
.text
_start:
    cbnz    x3, 1f
    mov     x3, #3
1:  adr     x0, vectors
    msr     vbar_el1, x0
    isb
    mov     x20, #0
    msr     daifclr, #2            // unmask IRQs
2:  wfi
    cmp     x20, x3
    b.lo    2b
    msr     daifset, #2
    adr     x9, message
    bl      uart_puts
    b       power_off

irq_handler:
    ldr     x21, =SLOT_REGS
    mov     w22, #1
    str     w22, [x21]             // acknowledge: the device lowers its line
    add     x20, x20, #1
    eret

.include "lib.s"

.balign 0x800
vectors:
    .skip   0x280
    b       irq_handler            // current EL with SPx, IRQ
    .skip   0x800 - 0x284

.section .rodata
message:
    .asciz  "irq: all interrupts handled\n"

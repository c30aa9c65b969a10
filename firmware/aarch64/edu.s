// edu: find QEMU's "edu" device (1234:11e8) through PCIe ECAM, place BAR0,
// check its id and liveness registers, compute 5! and move 256 bytes
// RAM -> device -> RAM by DMA. Prints the outcome and powers off.
// x0 = 0 on success, else the number of the step that failed.
.include "virt.inc"
.equ EDU_BAR,   PCIE_MMIO
.equ DMA_SRC,   RAM_BASE + 0x100000
.equ DMA_DST,   RAM_BASE + 0x101000
.equ EDU_BUF,   0x40000
.equ DMA_LEN,   256
.global _start
.text
_start:
    // 1: scan bus 0 for the device
    mov     x0, #1
    ldr     x1, =PCIE_ECAM
    ldr     w2, =0x11e81234
    mov     x3, #0
1:  ldr     w4, [x1]
    cmp     w4, w2
    b.eq    2f
    add     x1, x1, #(1 << 15)
    add     x3, x3, #1
    cmp     x3, #32
    b.lo    1b
    b       fail
    // place BAR0, enable memory decoding and bus mastering
2:  ldr     w4, =EDU_BAR
    str     w4, [x1, #0x10]
    mov     w4, #0x6
    strh    w4, [x1, #0x04]
    ldr     x5, =EDU_BAR
    // 2: identification register: 0x010000ed
    mov     x0, #2
    ldr     w4, [x5, #0x00]
    and     w4, w4, #0xff
    cmp     w4, #0xed
    b.ne    fail
    // 3: liveness: reads back the complement
    mov     x0, #3
    ldr     w4, =0x12345678
    str     w4, [x5, #0x04]
    ldr     w6, [x5, #0x04]
    mvn     w4, w4
    cmp     w4, w6
    b.ne    fail
    // 4: factorial of 5
    mov     x0, #4
    mov     w4, #5
    str     w4, [x5, #0x08]
3:  ldr     w4, [x5, #0x20]
    tbnz    w4, #0, 3b
    ldr     w4, [x5, #0x08]
    cmp     w4, #120
    b.ne    fail
    // 5: DMA RAM -> device -> RAM (64-bit address registers)
    mov     x0, #5
    ldr     x6, =DMA_SRC
    mov     x7, #0
4:  strb    w7, [x6, x7]
    add     x7, x7, #1
    cmp     x7, #DMA_LEN
    b.lo    4b
    ldr     x4, =DMA_SRC
    str     x4, [x5, #0x80]
    ldr     x4, =EDU_BUF
    str     x4, [x5, #0x88]
    mov     x4, #DMA_LEN
    str     x4, [x5, #0x90]
    mov     x4, #1                 // start, RAM -> device
    str     x4, [x5, #0x98]
5:  ldr     x4, [x5, #0x98]
    tbnz    x4, #0, 5b
    ldr     x4, =EDU_BUF
    str     x4, [x5, #0x80]
    ldr     x4, =DMA_DST
    str     x4, [x5, #0x88]
    mov     x4, #DMA_LEN
    str     x4, [x5, #0x90]
    mov     x4, #3                 // start, device -> RAM
    str     x4, [x5, #0x98]
6:  ldr     x4, [x5, #0x98]
    tbnz    x4, #0, 6b
    ldr     x6, =DMA_SRC
    ldr     x8, =DMA_DST
    mov     x7, #0
7:  ldrb    w4, [x6, x7]
    ldrb    w9, [x8, x7]
    cmp     w4, w9
    b.ne    fail
    add     x7, x7, #1
    cmp     x7, #DMA_LEN
    b.lo    7b
    mov     x0, #0
    mov     x19, x0
    adr     x9, ok_message
    bl      uart_puts
    mov     x0, x19
    b       power_off_keep

fail:
    mov     x19, x0
    adr     x9, fail_message
    bl      uart_puts
    mov     x0, x19
    b       power_off_keep

// power off, leaving the result in x19
power_off_keep:
    b       power_off

.include "lib.s"

.section .rodata
ok_message:
    .asciz  "edu: id, liveness, factorial and DMA OK\n"
fail_message:
    .asciz  "edu: FAILED (step in x19)\n"

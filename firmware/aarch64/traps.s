// traps: smc #0x42 with x0 = 1, hvc #7 with x0 = 2, then brk #3, then hlt #0.
// x19 and x20 keep what the smc and hvc handlers returned in x0.
.global _start
.text
_start:
    mov     x0, #1
    mov     x1, #0x11
    smc     #0x42
    mov     x19, x0
    mov     x0, #2
    hvc     #7
    mov     x20, x0
    brk     #3
    hlt     #0

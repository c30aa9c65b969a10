// poll: load the 64-bit word at x1 until it equals x2, then halt (hlt #0).
// x0 counts the loads. Used to show that map changes reach a running guest.
.global _start
.text
_start:
    mov     x0, #0
1:  ldr     x4, [x1]
    add     x0, x0, #1
    cmp     x4, x2
    b.ne    1b
    hlt     #0

// doorbell: store x3 to the MMIO register at x1; the very next load reads
// the word at x2 into x0; then halt (hlt #0). The host's MMIO callback may
// change the memory map in between: the load must see the change.
.global _start
.text
_start:
    str     w3, [x1]
    ldr     x0, [x2]
    hlt     #0

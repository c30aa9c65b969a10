// hello: print a line through the PL011 UART, then power off (PSCI).
.include "virt.inc"
.global _start
.text
_start:
    adr     x9, message
    bl      uart_puts
    b       power_off

.include "lib.s"

.section .rodata
message:
    .asciz  "Hello from memexpose virt (aarch64)!\n"

# hello: print a line through the 16550 UART at 0x3f8, then halt (cli; hlt).
.include "pc.inc"
.code64
.global _start
.text
_start:
    lea     message(%rip), %rsi
    call    puts
    jmp     halt

.include "lib.s"

.section .rodata
message:
    .asciz  "Hello from memexpose pc (x86_64)!\n"

# memcpy: copy %rcx bytes (a multiple of 8) from %rsi to %rdi with 64-bit
# loads and stores, then halt. %rax returns the number of bytes copied.
.code64
.global _start
.text
_start:
    xor     %rax, %rax
1:  cmp     %rcx, %rax
    jae     2f
    mov     (%rsi,%rax), %rdx
    mov     %rdx, (%rdi,%rax)
    add     $8, %rax
    jmp     1b
2:  cli
    hlt

# poll: load the 64-bit word at %rsi until it equals %rdx, then halt.
# %rax counts the loads.
.code64
.global _start
.text
_start:
    xor     %rax, %rax
1:  mov     (%rsi), %rbx
    inc     %rax
    cmp     %rdx, %rbx
    jne     1b
    cli
    hlt

# Shared routines for the x86_64 guests (included at the end of each one).

# puts: print the NUL-terminated string at %rsi. Clobbers %rax, %rdx, %rsi.
puts:
    mov     $(COM1 + 5), %dx
1:  in      %dx, %al
    test    $LSR_THRE, %al
    jz      1b
    lodsb
    test    %al, %al
    jz      2f
    mov     $COM1, %dx
    out     %al, %dx
    jmp     puts
2:  ret

# halt: stop for good (interrupts off, then hlt).
halt:
    cli
    hlt
    jmp     halt

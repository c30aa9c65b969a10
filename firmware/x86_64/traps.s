# traps: vmcall with rax = 1, rbx = 0x11; out 0x55 to port 0x80; in from
# port 0x81; then int3, then halt. r12 keeps vmcall's rax, r13 the port read.
.code64
.global _start
.text
_start:
    mov     $1, %rax
    mov     $0x11, %rbx
    vmcall
    mov     %rax, %r12
    mov     $0x55, %al
    out     %al, $0x80
    xor     %eax, %eax
    in      $0x81, %al
    mov     %rax, %r13
    int3
    cli
    hlt

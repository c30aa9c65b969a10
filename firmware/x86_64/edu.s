# edu: find QEMU's "edu" device (1234:11e8) through 0xcf8/0xcfc, place BAR0,
# check its id and liveness registers, compute 5! and move 256 bytes
# RAM -> device -> RAM by DMA. Prints the outcome and halts.
# %rax = 0 on success, else the number of the step that failed.
.include "pc.inc"
.equ EDU_BAR,   PCI_MMIO
.equ DMA_SRC,   0x200000
.equ DMA_DST,   0x201000
.equ EDU_BUF,   0x40000
.equ DMA_LEN,   256
.code64
.global _start
.text
_start:
    # 1: scan bus 0 for the device
    mov     $1, %r15
    xor     %ebx, %ebx             # device number
1:  mov     %ebx, %eax
    shl     $11, %eax
    or      $0x80000000, %eax
    mov     $PCI_CONFIG_ADDR, %dx
    out     %eax, %dx
    mov     $PCI_CONFIG_DATA, %dx
    in      %dx, %eax
    cmp     $0x11e81234, %eax
    je      2f
    inc     %ebx
    cmp     $32, %ebx
    jb      1b
    jmp     fail
    # place BAR0 (register 0x10), enable memory decoding and bus mastering
2:  mov     %ebx, %eax
    shl     $11, %eax
    or      $0x80000010, %eax
    mov     $PCI_CONFIG_ADDR, %dx
    out     %eax, %dx
    mov     $EDU_BAR, %eax
    mov     $PCI_CONFIG_DATA, %dx
    out     %eax, %dx
    mov     %ebx, %eax
    shl     $11, %eax
    or      $0x80000004, %eax
    mov     $PCI_CONFIG_ADDR, %dx
    out     %eax, %dx
    mov     $0x6, %ax
    mov     $PCI_CONFIG_DATA, %dx
    out     %ax, %dx
    mov     $EDU_BAR, %r14d
    # 2: identification register: 0x010000ed
    mov     $2, %r15
    mov     (%r14), %eax
    cmp     $0xed, %al
    jne     fail
    # 3: liveness: reads back the complement
    mov     $3, %r15
    movl    $0x12345678, 4(%r14)
    mov     4(%r14), %eax
    cmp     $0xedcba987, %eax
    jne     fail
    # 4: factorial of 5
    mov     $4, %r15
    movl    $5, 8(%r14)
3:  testl   $1, 0x20(%r14)
    jnz     3b
    cmpl    $120, 8(%r14)
    jne     fail
    # 5: DMA RAM -> device -> RAM (64-bit address registers)
    mov     $5, %r15
    xor     %ecx, %ecx
4:  mov     %cl, DMA_SRC(%rcx)
    inc     %ecx
    cmp     $DMA_LEN, %ecx
    jb      4b
    movq    $DMA_SRC, 0x80(%r14)
    movq    $EDU_BUF, 0x88(%r14)
    movq    $DMA_LEN, 0x90(%r14)
    movq    $1, 0x98(%r14)         # start, RAM -> device
5:  testq   $1, 0x98(%r14)
    jnz     5b
    movq    $EDU_BUF, 0x80(%r14)
    movq    $DMA_DST, 0x88(%r14)
    movq    $DMA_LEN, 0x90(%r14)
    movq    $3, 0x98(%r14)         # start, device -> RAM
6:  testq   $1, 0x98(%r14)
    jnz     6b
    xor     %ecx, %ecx
7:  mov     DMA_SRC(%rcx), %al
    cmp     DMA_DST(%rcx), %al
    jne     fail
    inc     %ecx
    cmp     $DMA_LEN, %ecx
    jb      7b
    xor     %r15, %r15
    lea     ok_message(%rip), %rsi
    call    puts
    mov     %r15, %rax
    jmp     halt

fail:
    lea     fail_message(%rip), %rsi
    call    puts
    mov     %r15, %rax
    jmp     halt

.include "lib.s"

.section .rodata
ok_message:
    .asciz  "edu: id, liveness, factorial and DMA OK\n"
fail_message:
    .asciz  "edu: FAILED (step in r15)\n"

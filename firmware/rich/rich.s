# rich: the rich OS's memexpose driver and a scripted client of the trusted OS.
#
# The driver finds memexpose-pci (1af4:1111) through 0xcf8/0xcfc, sizes and
# places BAR0 (registers) and BAR1 (the window onto the trusted VM's public
# page), enables memory decoding and the link, and takes the device's INTx
# at IDT vector 32. A secure call (`mx_call`) is the driver's SMC conduit:
# it writes TX_TYPE = function id and TX_DATA = x1 (the message argument's
# physical address), x2 (the call id), hits SEND, and sleeps in `hlt` until
# the return interrupt arrives. docs/flagship.md describes the ABI;
# ../trusted/mxtee.inc has its numbers.
#
# The client runs `script` (stores, loads, signs of 0 B .. 64 KiB, error
# cases), checks what it can check itself, prints each result, and keeps a
# call log in RAM (`call_log`) that the host verifies afterwards. Every
# message and payload gets fresh memory from an arena at 4 MiB, so the
# log's buffers are still there at the end. Success: `cli; hlt` with
# rax = 0. A failed check or a dead link: a message, then `ud2` (a guest
# panic: `memexpose run` exits 1).
#
# Register use: %r14 = BAR0 (the registers), %r15 = the script cursor.
.include "pc.inc"
.include "mxtee.inc"

.equ MX_VENDOR_DEVICE, 0x11111af4
.equ ARENA,            0x400000     # messages and payloads, bump-allocated
.equ LOG_ENTRY,        64
.equ LOG_MAX,          256
.equ MX_ERR_LINK_DOWN, 0xffff0f01   # driver errors (never from the trusted OS)
.equ MX_ERR_PROTOCOL,  0xffff0f02
.equ PROBE_BEYOND,     0x1000       # BAR1 offset past the trusted 4 KiB exposure

# Script operations: .quad op, a, b, c, expected status
.equ OP_END,        0
.equ OP_PROBE,      1   # read the trusted public page, and past it
.equ OP_VERSION,    2
.equ OP_RAW,        3   # a = function id, no message
.equ OP_STORE,      4   # a = key, b = length, c = fill seed
.equ OP_LOAD,       5   # a = key, b = capacity
.equ OP_SIGN,       6   # a = length, b = misalignment, c = fill seed
.equ OP_SIGN_AGAIN, 7   # the last SIGN's buffer again: same digest
.equ OP_SIGN_PA,    8   # a = raw payload address, b = length
.equ OP_BURST,      9   # a = count, b = length, c = first seed: SIGNs

.code64
.global _start
.text
_start:
    # the IDT: vector 32 -> irq_handler
    lea     irq_handler(%rip), %rax
    lea     idt + 32 * 16(%rip), %rdi
    mov     %ax, (%rdi)
    movw    $0x08, 2(%rdi)
    movw    $0x8e00, 4(%rdi)
    shr     $16, %rax
    mov     %ax, 6(%rdi)
    shr     $16, %rax
    mov     %eax, 8(%rdi)
    lidt    idtr(%rip)
    movq    $ARENA, arena(%rip)
    lea     banner(%rip), %rsi
    call    puts
    call    pci_setup
    cmpq    $0, wait_for_link(%rip)
    je      1f
    call    link_up
    jmp     2f
1:  movl    $1, MX_ENABLE(%r14)    # tests: call at once, before the link is up
2:    lea     script(%rip), %r15
    sti
next_step:
    mov     (%r15), %rax
    cmp     $OP_END, %rax
    je      done
    lea     steps(%rip), %rdx
    call    *-8(%rdx, %rax, 8)
    add     $40, %r15
    jmp     next_step

done:
    cli
    lea     msg_done1(%rip), %rsi
    call    puts
    mov     call_count(%rip), %rax
    call    put_dec
    lea     msg_done2(%rip), %rsi
    call    puts
    mov     failures(%rip), %rax
    test    %rax, %rax
    jnz     failed
    lea     msg_pass(%rip), %rsi
    call    puts
    xor     %eax, %eax
    jmp     halt
failed:
    call    put_dec
    lea     msg_failed(%rip), %rsi
    call    puts
panic:
    mov     failures(%rip), %rax
    ud2

# -- PCI: find the device, place its BARs, enable decoding -------------------
pci_setup:
    xor     %ebx, %ebx
1:  mov     %ebx, %r13d
    shl     $11, %r13d
    or      $0x80000000, %r13d     # %r13d: config address of bus 0, device %ebx
    xor     %eax, %eax
    call    cfg_read
    cmp     $MX_VENDOR_DEVICE, %eax
    je      2f
    inc     %ebx
    cmp     $32, %ebx
    jb      1b
    lea     msg_no_device(%rip), %rsi
    call    puts
    jmp     panic
2:  mov     %ebx, pci_slot(%rip)
    # BAR0: 32-bit memory; size from the all-ones probe
    mov     $0x10, %eax
    mov     $0xffffffff, %ecx
    call    cfg_write
    mov     $0x10, %eax
    call    cfg_read
    and     $0xfffffff0, %eax
    neg     %eax
    mov     %rax, bar0_size(%rip)
    mov     $0x10, %eax
    mov     $PCI_MMIO, %ecx
    call    cfg_write
    # BAR1: 64-bit memory (0x14 low, 0x18 high), after BAR0, aligned to its size
    mov     $0x14, %eax
    mov     $0xffffffff, %ecx
    call    cfg_write
    mov     $0x18, %eax
    mov     $0xffffffff, %ecx
    call    cfg_write
    mov     $0x18, %eax
    call    cfg_read
    mov     %eax, %r12d
    shl     $32, %r12
    mov     $0x14, %eax
    call    cfg_read
    and     $0xfffffff0, %eax
    or      %rax, %r12
    neg     %r12                   # %r12 = BAR1 size
    mov     %r12, bar1_size(%rip)
    mov     $PCI_MMIO, %eax
    add     bar0_size(%rip), %rax
    lea     -1(%r12), %rcx
    add     %rcx, %rax
    not     %rcx
    and     %rcx, %rax             # align up to the size
    mov     %rax, bar1_addr(%rip)
    mov     %eax, %ecx
    mov     $0x14, %eax
    call    cfg_write
    mov     bar1_addr(%rip), %rcx
    shr     $32, %rcx
    mov     $0x18, %eax
    call    cfg_write
    # command: memory decoding on
    mov     $0x04, %eax
    call    cfg_read
    or      $0x2, %eax
    mov     %eax, %ecx
    mov     $0x04, %eax
    call    cfg_write
    mov     $PCI_MMIO, %r14d
    mov     %r14, mx_bar0(%rip)
    lea     msg_found(%rip), %rsi
    call    puts
    mov     pci_slot(%rip), %eax
    call    put_dec
    lea     msg_bar0(%rip), %rsi
    call    puts
    mov     bar0_size(%rip), %rax
    call    put_dec
    lea     msg_bar1(%rip), %rsi
    call    puts
    mov     bar1_size(%rip), %rax
    call    put_dec
    lea     msg_at(%rip), %rsi
    call    puts
    mov     bar1_addr(%rip), %rax
    call    put_hex
    lea     newline(%rip), %rsi
    call    puts
    ret

# cfg_read: %eax = register -> %eax = its dword. Clobbers %edx.
cfg_read:
    or      %r13d, %eax
    mov     $PCI_CONFIG_ADDR, %dx
    out     %eax, %dx
    mov     $PCI_CONFIG_DATA, %dx
    in      %dx, %eax
    ret

# cfg_write: %eax = register, %ecx = value. Clobbers %eax, %edx.
cfg_write:
    or      %r13d, %eax
    mov     $PCI_CONFIG_ADDR, %dx
    out     %eax, %dx
    mov     $PCI_CONFIG_DATA, %dx
    mov     %ecx, %eax
    out     %eax, %dx
    ret

# link_up: enable the link and wait until STATUS says connected, or that no
# peer answered (the device bounds the attempt by its connect timeout).
link_up:
    movl    $1, MX_ENABLE(%r14)
1:  mov     MX_STATUS(%r14), %eax
    test    $MX_ST_CONNECTED, %eax
    jnz     3f
    test    $(MX_ST_CONNECT_FAILED | MX_ST_PEER_LOST), %eax
    jnz     4f
    mov     $2000, %ecx
2:  pause
    dec     %ecx
    jnz     2b
    jmp     1b
3:  lea     msg_link(%rip), %rsi
    call    puts
    ret
4:  lea     msg_no_link(%rip), %rsi
    call    puts
    jmp     link_status

# -- the driver's secure call -------------------------------------------------
# mx_call: %rdi = function id, %rsi = message argument (physical address, or 0)
# -> %rax = r0 status, %rdx = r2 value. Logs the call. Clobbers %rcx, %r8-%r11.
mx_call:
    push    %rbx
    mov     call_count(%rip), %rbx
    cmp     $LOG_MAX, %rbx
    jae     log_full
    shl     $6, %rbx
    lea     call_log(%rip), %r8
    add     %r8, %rbx              # %rbx = this call's log entry
    incq    call_id(%rip)
    mov     call_id(%rip), %r9
    mov     %rdi, 0(%rbx)          # function id
    mov     %r9, 8(%rbx)           # call id
    mov     %rsi, 16(%rbx)         # message
    mov     $MX_ERR_LINK_DOWN, %eax
    mov     %rax, 24(%rbx)
    movq    $0, 32(%rbx)
    mov     MX_STATUS(%r14), %eax
    test    $MX_ST_CONNECTED, %eax
    jz      link_down              # not connected: fail at once, never wait
    rdtsc
    shl     $32, %rdx
    or      %rax, %rdx
    mov     %rdx, 48(%rbx)         # start (rdtsc)
    movb    $0, reply_ready(%rip)
    mov     %rdi, MX_TX_TYPE(%r14)
    mov     %rsi, MX_TX_DATA(%r14)     # x1: the message argument
    mov     %r9, MX_TX_DATA + 8(%r14)  # x2: the call id
    cli
    movl    $1, MX_SEND(%r14)
1:  cmpb    $0, reply_ready(%rip)
    jne     2f
    mov     MX_STATUS(%r14), %eax  # not delivered, or the peer went away
    test    $(MX_ST_SEND_FAILED | MX_ST_PEER_LOST), %eax
    jnz     link_down
    sti
    hlt                            # the return interrupt ends this
    cli
    jmp     1b
2:  sti
    rdtsc
    shl     $32, %rdx
    or      %rax, %rdx
    mov     %rdx, 56(%rbx)         # end (rdtsc)
    incq    call_count(%rip)
    mov     reply_r3(%rip), %rax
    mov     %rax, 40(%rbx)         # trusted service time
    mov     reply_type(%rip), %rax # the return must match the call
    mov     $MXTEE_RETURN_HI, %ecx
    shl     $32, %rcx
    or      %rdi, %rcx
    cmp     %rcx, %rax
    jne     3f
    cmp     reply_r1(%rip), %r9
    jne     3f
    mov     reply_r0(%rip), %rax
    mov     reply_r2(%rip), %rdx
    mov     %rax, 24(%rbx)
    mov     %rdx, 32(%rbx)
    pop     %rbx
    ret
3:  mov     $MX_ERR_PROTOCOL, %eax
    mov     %rax, 24(%rbx)
    xor     %edx, %edx
    pop     %rbx
    ret
link_down:
    sti
    incq    call_count(%rip)
    lea     msg_link_down(%rip), %rsi
    call    puts
    mov     8(%rbx), %rax
    call    put_dec
link_status:
    lea     msg_status(%rip), %rsi
    call    puts
    mov     MX_STATUS(%r14), %rax
    call    put_hex
    lea     msg_status2(%rip), %rsi
    call    puts
    jmp     panic
log_full:
    lea     msg_log_full(%rip), %rsi
    call    puts
    jmp     panic

# The device's interrupt: drain the receive queue (the line is high while it
# is non-empty); a return is kept for mx_call.
irq_handler:
    push    %rax
    push    %rsi
    mov     mx_bar0(%rip), %rsi
1:  mov     MX_RECV(%rsi), %eax    # pop one into RX_*
    test    %eax, %eax
    jz      2f
    mov     MX_RX_TYPE(%rsi), %rax
    mov     %rax, reply_type(%rip)
    mov     MX_RX_DATA(%rsi), %rax
    mov     %rax, reply_r0(%rip)
    mov     MX_RX_DATA + 8(%rsi), %rax
    mov     %rax, reply_r1(%rip)
    mov     MX_RX_DATA + 16(%rsi), %rax
    mov     %rax, reply_r2(%rip)
    mov     MX_RX_DATA + 24(%rsi), %rax
    mov     %rax, reply_r3(%rip)
    movb    $1, reply_ready(%rip)
    incq    interrupts(%rip)
    jmp     1b
2:  pop     %rsi
    pop     %rax
    popfq
    ret

# -- script steps (each: %r15 = the step; may clobber all but %r14, %r15) ---
# alloc: %rdi = bytes -> %rax = 8-aligned fresh memory.
alloc:
    mov     arena(%rip), %rax
    lea     7(%rax, %rdi), %rdx
    and     $-8, %rdx
    mov     %rdx, arena(%rip)
    ret

# new_msg: %rdi = function id, %rsi = key, %rdx = payload address, %rcx = length
# -> %rax = a fresh message argument.
new_msg:
    push    %rdx
    push    %rdi
    mov     $MSG_SIZE, %edi
    call    alloc
    pop     %rdi
    pop     %rdx
    mov     %edi, MSG_CMD(%rax)
    movl    $0xffffffff, MSG_RET(%rax)
    mov     %rsi, MSG_KEY(%rax)
    mov     %rdx, MSG_BUF(%rax)
    mov     %rcx, MSG_LEN(%rax)
    movq    $0, MSG_OUT(%rax)
    ret

# fill: %rdi = address, %rcx = length, %rdx = seed: xorshift64* bytes (8 per step,
# little-endian). Clobbers %rax, %rcx, %rdx, %rsi, %rdi, %r8.
fill:
    lea     1(%rdx, %rdx), %rax    # state = 2 * seed + 1: distinct and odd
    mov     $0x2545f4914f6cdd1d, %r8
1:  test    %rcx, %rcx
    jz      3f
    mov     %rax, %rdx
    shr     $12, %rdx
    xor     %rdx, %rax
    mov     %rax, %rdx
    shl     $25, %rdx
    xor     %rdx, %rax
    mov     %rax, %rdx
    shr     $27, %rdx
    xor     %rdx, %rax
    mov     %rax, %rdx
    imul    %r8, %rdx
    mov     $8, %esi
2:  mov     %dl, (%rdi)
    inc     %rdi
    shr     $8, %rdx
    dec     %rcx
    jz      3f
    dec     %esi
    jnz     2b
    jmp     1b
3:  ret

# expect: %rax = status from a call; the step's expected status must match.
# Prints " -> NAME" and records a failure otherwise.
expect:
    push    %rax
    lea     msg_arrow(%rip), %rsi
    call    puts
    mov     (%rsp), %rax
    call    status_name
    call    puts
    pop     %rax
    cmp     32(%r15), %rax
    je      1f
    lea     msg_unexpected(%rip), %rsi
    call    puts
    mov     32(%r15), %rax
    call    status_name
    call    puts
    incq    failures(%rip)
    mov     $1, %eax
    ret
1:  xor     %eax, %eax
    ret

# check: %al = 0 if the check passed; else print the message at %rsi, count it.
check:
    test    %al, %al
    jz      1f
    call    puts
    incq    failures(%rip)
1:  ret

# step_line: print "#<id+1> NAME" for the next call (%rsi = name).
step_line:
    push    %rsi
    lea     msg_call(%rip), %rsi
    call    puts
    mov     call_id(%rip), %rax
    inc     %rax
    call    put_dec
    mov     $' ', %al
    call    put_char
    pop     %rsi
    call    puts
    ret

step_probe:
    mov     bar1_addr(%rip), %rbx
    mov     (%rbx), %rax           # the trusted public page (forwarded, then shared)
    mov     %rax, probe_public(%rip)
    mov     $MXTEE_PUBLIC_MAGIC, %rcx
    cmp     %rcx, %rax
    setne   %al
    lea     msg_bad_magic(%rip), %rsi
    call    check
    lea     msg_public(%rip), %rsi
    call    puts
    mov     8(%rbx), %rax
    call    put_hex
    lea     newline(%rip), %rsi
    call    puts
    mov     PROBE_BEYOND(%rbx), %rax   # past the exposure: refused by the link
    mov     %rax, probe_beyond(%rip)
    lea     msg_beyond(%rip), %rsi
    call    puts
    mov     probe_beyond(%rip), %rax
    call    put_hex
    lea     msg_beyond2(%rip), %rsi
    call    puts
    ret

step_version:
    lea     name_version(%rip), %rsi
    call    step_line
    mov     $MXTEE_VERSION, %edi
    xor     %esi, %esi
    call    mx_call
    push    %rdx
    call    expect
    pop     %rdx
    test    %eax, %eax
    jnz     1f
    push    %rdx
    lea     msg_version(%rip), %rsi
    call    puts
    mov     (%rsp), %rax
    call    put_hex
    pop     %rdx
    cmp     $MXTEE_API_VERSION, %rdx
    setne   %al
    lea     msg_bad_version(%rip), %rsi
    call    check
1:  lea     newline(%rip), %rsi
    call    puts
    ret

step_raw:
    lea     name_raw(%rip), %rsi
    call    step_line
    mov     8(%r15), %rax
    call    put_hex
    mov     8(%r15), %rdi
    xor     %esi, %esi
    call    mx_call
    call    expect
    lea     newline(%rip), %rsi
    call    puts
    ret

step_store:
    lea     name_store(%rip), %rsi
    call    step_line
    call    print_key_len
    mov     16(%r15), %rdi
    call    alloc
    mov     %rax, %r12             # %r12 = payload
    mov     %rax, %rdi
    mov     16(%r15), %rcx
    mov     24(%r15), %rdx
    call    fill
    mov     $MXTEE_STORE, %edi
    mov     8(%r15), %rsi
    mov     %r12, %rdx
    mov     16(%r15), %rcx
    call    new_msg
    mov     %rax, %r13
    mov     $MXTEE_STORE, %edi
    mov     %r13, %rsi
    call    mx_call
    call    expect
    test    %eax, %eax
    jnz     1f
    cmpq    $TEE_SUCCESS, 32(%r15)
    jne     1f
    # remember what KEY holds now (for the LOADs)
    mov     8(%r15), %rdi
    call    find_stored
    mov     8(%r15), %rcx
    mov     %rcx, (%rax)
    mov     %r12, 8(%rax)
    mov     16(%r15), %rcx
    mov     %rcx, 16(%rax)
1:  lea     newline(%rip), %rsi
    call    puts
    ret

step_load:
    lea     name_load(%rip), %rsi
    call    step_line
    call    print_key_len
    mov     16(%r15), %rdi
    call    alloc
    mov     %rax, %r12
    mov     $MXTEE_LOAD, %edi
    mov     8(%r15), %rsi
    mov     %r12, %rdx
    mov     16(%r15), %rcx
    call    new_msg
    mov     %rax, %r13
    mov     $MXTEE_LOAD, %edi
    mov     %r13, %rsi
    call    mx_call
    push    %rdx
    call    expect
    pop     %rbx                   # %rbx = object size
    test    %eax, %eax
    jnz     9f
    mov     8(%r15), %rdi
    call    find_stored
    mov     %rax, %rbp             # what the STOREs put there
    cmpq    $TEE_SUCCESS, 32(%r15)
    je      1f
    mov     $TEE_ERROR_SHORT_BUFFER, %eax
    cmp     %rax, 32(%r15)
    jne     9f
    cmp     16(%rbp), %rbx         # SHORT_BUFFER says how much is needed
    setne   %al
    lea     msg_bad_size(%rip), %rsi
    call    check
    jmp     9f
1:  cmp     16(%rbp), %rbx
    setne   %al
    lea     msg_bad_size(%rip), %rsi
    call    check
    cmp     MSG_OUT(%r13), %rbx    # the message says the same as r2
    setne   %al
    lea     msg_bad_out(%rip), %rsi
    call    check
    mov     %r12, %rdi
    mov     8(%rbp), %rsi
    mov     %rbx, %rcx
    repe cmpsb
    setne   %al
    lea     msg_bad_data(%rip), %rsi
    call    check
    lea     msg_same(%rip), %rsi
    call    puts
9:  lea     newline(%rip), %rsi
    call    puts
    ret

step_sign:
    lea     name_sign(%rip), %rsi
    call    step_line
    lea     msg_len(%rip), %rsi
    call    puts
    mov     8(%r15), %rax
    call    put_dec
    mov     8(%r15), %rdi
    add     $8, %rdi
    call    alloc
    add     16(%r15), %rax         # misaligned on purpose
    mov     %rax, %r12
    mov     %rax, %rdi
    mov     8(%r15), %rcx
    mov     24(%r15), %rdx
    call    fill
    mov     %r12, %rdx
    mov     8(%r15), %rcx
    call    sign
    ret

step_sign_again:
    lea     name_sign(%rip), %rsi
    call    step_line
    lea     msg_again(%rip), %rsi
    call    puts
    mov     last_digest(%rip), %rbx
    mov     last_buf(%rip), %rdx
    mov     last_len(%rip), %rcx
    call    sign
    cmp     last_digest(%rip), %rbx
    setne   %al
    lea     msg_not_same(%rip), %rsi
    call    check
    ret

step_sign_pa:
    lea     name_sign(%rip), %rsi
    call    step_line
    lea     msg_outside(%rip), %rsi
    call    puts
    mov     8(%r15), %rax
    call    put_hex
    mov     8(%r15), %rdx
    mov     16(%r15), %rcx
    call    sign
    ret

# sign: %rdx = payload, %rcx = length: SIGN, expect, print the digest.
sign:
    mov     %rdx, %r12
    mov     %rcx, %rbp
    mov     $MXTEE_SIGN, %edi
    xor     %esi, %esi
    call    new_msg
    mov     %rax, %r13
    mov     $MXTEE_SIGN, %edi
    mov     %r13, %rsi
    call    mx_call
    push    %rdx
    call    expect
    pop     %rdx
    test    %eax, %eax
    jnz     1f
    cmpq    $TEE_SUCCESS, 32(%r15)
    jne     1f
    mov     %rdx, last_digest(%rip)
    mov     %r12, last_buf(%rip)
    mov     %rbp, last_len(%rip)
    cmp     MSG_OUT(%r13), %rdx
    setne   %al
    lea     msg_bad_out(%rip), %rsi
    call    check
    lea     msg_digest(%rip), %rsi
    call    puts
    mov     last_digest(%rip), %rax
    call    put_hex
1:  lea     newline(%rip), %rsi
    call    puts
    ret

step_burst:
    lea     msg_burst(%rip), %rsi
    call    puts
    mov     8(%r15), %rax
    call    put_dec
    lea     msg_burst2(%rip), %rsi
    call    puts
    mov     16(%r15), %rax
    call    put_dec
    lea     msg_burst3(%rip), %rsi
    call    puts
    mov     8(%r15), %rax
    mov     %rax, burst_left(%rip)
    mov     24(%r15), %rax
    mov     %rax, burst_seed(%rip)
    movq    $0, burst_bad(%rip)
1:  mov     16(%r15), %rdi
    call    alloc
    mov     %rax, %r12
    mov     %rax, %rdi
    mov     16(%r15), %rcx
    mov     burst_seed(%rip), %rdx
    call    fill
    incq    burst_seed(%rip)
    mov     $MXTEE_SIGN, %edi
    xor     %esi, %esi
    mov     %r12, %rdx
    mov     16(%r15), %rcx
    call    new_msg
    mov     %rax, %rsi
    mov     $MXTEE_SIGN, %edi
    call    mx_call
    cmp     32(%r15), %rax
    je      2f
    incq    burst_bad(%rip)
2:  decq    burst_left(%rip)
    jnz     1b
    mov     burst_bad(%rip), %rax
    test    %rax, %rax
    jnz     3f
    lea     msg_all_ok(%rip), %rsi
    call    puts
    ret
3:  add     %rax, failures(%rip)
    call    put_dec
    lea     msg_burst_bad(%rip), %rsi
    call    puts
    ret

# print_key_len: " key=0x... len=N" for STORE/LOAD steps.
print_key_len:
    lea     msg_key(%rip), %rsi
    call    puts
    mov     8(%r15), %rax
    call    put_hex
    lea     msg_len(%rip), %rsi
    call    puts
    mov     16(%r15), %rax
    call    put_dec
    ret

# find_stored: %rdi = key -> %rax = its entry in `stored` (key, payload, length),
# or a free one.
find_stored:
    lea     stored(%rip), %rax
    mov     $16, %ecx
1:  cmp     %rdi, (%rax)
    je      3f
    add     $24, %rax
    dec     %ecx
    jnz     1b
    lea     stored(%rip), %rax
2:  cmpq    $0, (%rax)
    je      3f
    add     $24, %rax
    jmp     2b
3:  ret

# status_name: %rax = status -> %rsi = its name.
status_name:
    lea     statuses(%rip), %rsi
1:  mov     8(%rsi), %rdx
    test    %rdx, %rdx
    jz      2f
    cmp     (%rsi), %rax
    je      2f
    add     $16, %rsi
    jmp     1b
2:  mov     8(%rsi), %rsi
    test    %rsi, %rsi
    jnz     3f
    lea     status_other(%rip), %rsi
3:  ret

# put_char: print %al. Clobbers %rax, %rdx, %rsi.
put_char:
    mov     %al, char_buf(%rip)
    movb    $0, char_buf + 1(%rip)
    lea     char_buf(%rip), %rsi
    jmp     puts

# put_hex: print %rax as 0x and its hex digits (no leading zeros).
# Clobbers %rax, %rcx, %rdx, %rsi, %rdi.
put_hex:
    lea     num_buf(%rip), %rdi
    movw    $0x7830, (%rdi)        # "0x"
    add     $2, %rdi
    mov     $16, %ecx
1:  rol     $4, %rax               # skip leading zero digits, keep the last one
    test    $15, %al
    jnz     2f
    dec     %ecx
    cmp     $1, %ecx
    jne     1b
    rol     $4, %rax
2:  ror     $4, %rax
3:  rol     $4, %rax
    mov     %eax, %edx
    and     $15, %edx
    cmp     $10, %edx
    jb      4f
    add     $('a' - '0' - 10), %edx
4:  add     $'0', %edx
    mov     %dl, (%rdi)
    inc     %rdi
    dec     %ecx
    jnz     3b
    movb    $0, (%rdi)
    lea     num_buf(%rip), %rsi
    jmp     puts

# put_dec: print %rax in decimal. Clobbers %rax, %rcx, %rdx, %rsi, %rdi.
put_dec:
    lea     num_buf + 31(%rip), %rdi
    movb    $0, (%rdi)
    mov     $10, %ecx
1:  xor     %edx, %edx
    div     %rcx
    add     $'0', %dl
    dec     %rdi
    mov     %dl, (%rdi)
    test    %rax, %rax
    jnz     1b
    mov     %rdi, %rsi
    jmp     puts

.include "lib.s"

.section .rodata
.balign 8
steps:
    .quad   step_probe, step_version, step_raw, step_store, step_load
    .quad   step_sign, step_sign_again, step_sign_pa, step_burst

# The client's script: op, a, b, c, expected status (see OP_*).
script:
    .quad   OP_PROBE, 0, 0, 0, 0
    .quad   OP_VERSION, 0, 0, 0, TEE_SUCCESS
    .quad   OP_RAW, 0xf20000ee, 0, 0, -1                  # unknown trusted-OS function
    .quad   OP_RAW, 0x84000000, 0, 0, -1                  # not the trusted OS's at all
    .quad   OP_STORE, 0x1001, 16, 1, TEE_SUCCESS
    .quad   OP_STORE, 0x1002, 4096, 2, TEE_SUCCESS
    .quad   OP_STORE, 0x1003, 65536, 3, TEE_SUCCESS
    .quad   OP_LOAD, 0x1001, 64, 0, TEE_SUCCESS
    .quad   OP_LOAD, 0x1002, 4096, 0, TEE_SUCCESS
    .quad   OP_LOAD, 0x1003, 65536, 0, TEE_SUCCESS
    .quad   OP_LOAD, 0x1002, 100, 0, TEE_ERROR_SHORT_BUFFER
    .quad   OP_LOAD, 0x9999, 64, 0, TEE_ERROR_ITEM_NOT_FOUND
    .quad   OP_STORE, 0x1001, 1000, 4, TEE_SUCCESS         # replace
    .quad   OP_LOAD, 0x1001, 4096, 0, TEE_SUCCESS
    .quad   OP_STORE, 0, 16, 5, TEE_ERROR_BAD_PARAMETERS   # key 0 is no key
    .quad   OP_STORE, 0x1004, 65537, 6, TEE_ERROR_BAD_PARAMETERS
    .quad   OP_STORE, 0x2001, 8, 7, TEE_SUCCESS
    .quad   OP_STORE, 0x2002, 8, 8, TEE_SUCCESS
    .quad   OP_STORE, 0x2003, 8, 9, TEE_SUCCESS
    .quad   OP_STORE, 0x2004, 8, 10, TEE_SUCCESS
    .quad   OP_STORE, 0x2005, 8, 11, TEE_SUCCESS
    .quad   OP_STORE, 0x2006, 8, 12, TEE_ERROR_OUT_OF_MEMORY   # 8 slots
    .quad   OP_LOAD, 0x2005, 8, 0, TEE_SUCCESS
    .quad   OP_SIGN, 0, 0, 20, TEE_SUCCESS
    .quad   OP_SIGN, 1, 0, 21, TEE_SUCCESS
    .quad   OP_SIGN, 1000, 3, 22, TEE_SUCCESS             # odd start and length
    .quad   OP_SIGN, 4096, 0, 23, TEE_SUCCESS
    .quad   OP_SIGN, 65536, 0, 24, TEE_SUCCESS
    .quad   OP_SIGN_AGAIN, 0, 0, 0, TEE_SUCCESS
    .quad   OP_SIGN_PA, 0x7ffffff000, 64, 0, TEE_ERROR_BAD_PARAMETERS
    .quad   OP_BURST, 40, 256, 100, TEE_SUCCESS
    .quad   OP_END, 0, 0, 0, 0

statuses:
    .quad   TEE_SUCCESS, status_ok
    .quad   TEE_ERROR_BAD_PARAMETERS, status_bad
    .quad   TEE_ERROR_ITEM_NOT_FOUND, status_not_found
    .quad   TEE_ERROR_OUT_OF_MEMORY, status_oom
    .quad   TEE_ERROR_SHORT_BUFFER, status_short
    .quad   -1, status_not_supported
    .quad   MX_ERR_PROTOCOL, status_protocol
    .quad   0, 0
status_ok:            .asciz "ok"
status_bad:           .asciz "BAD_PARAMETERS"
status_not_found:     .asciz "ITEM_NOT_FOUND"
status_oom:           .asciz "OUT_OF_MEMORY"
status_short:         .asciz "SHORT_BUFFER"
status_not_supported: .asciz "NOT_SUPPORTED"
status_protocol:      .asciz "PROTOCOL_ERROR (the return did not match the call)"
status_other:         .asciz "error"
name_version:         .asciz "VERSION"
name_raw:             .asciz "function "
name_store:           .asciz "STORE"
name_load:            .asciz "LOAD"
name_sign:            .asciz "SIGN"
banner:          .asciz "rich OS (x86_64): memexpose driver and secure-call client starting\n"
msg_no_device:   .asciz "no memexpose-pci device (1af4:1111) on bus 0\n"
msg_found:       .asciz "memexpose-pci in slot "
msg_bar0:        .asciz ", BAR0 "
msg_bar1:        .asciz " bytes, BAR1 "
msg_at:          .asciz " bytes at "
msg_link:        .asciz "memexpose link up\n"
msg_no_link:     .asciz "memexpose link not up: no trusted VM answered; start it first"
msg_link_down:   .asciz "secure call failed, the memexpose link is not up: call #"
msg_status:      .asciz "\nSTATUS="
msg_status2:     .asciz " (0x2 connected, 0x4 peer lost, 0x8 connecting, 0x10 connect failed, 0x20 send failed)\n"
msg_log_full:    .asciz "call log full\n"
msg_public:      .asciz "trusted public page: magic MXTEE1, API version "
msg_beyond:      .asciz "BAR1+0x1000, past the trusted exposure, reads "
msg_beyond2:     .asciz " (refused: secure RAM is not exposed)\n"
msg_bad_magic:   .asciz "CHECK FAILED: the trusted public page has no MXTEE1 magic\n"
msg_call:        .asciz "#"
msg_arrow:       .asciz " -> "
msg_unexpected:  .asciz "  CHECK FAILED: expected "
msg_version:     .asciz " version="
msg_bad_version: .asciz "  CHECK FAILED: version is not 1.0"
msg_key:         .asciz " key="
msg_len:         .asciz " len="
msg_same:        .asciz ", same bytes as stored"
msg_bad_size:    .asciz "  CHECK FAILED: wrong object size"
msg_bad_out:     .asciz "  CHECK FAILED: message and r2 differ"
msg_bad_data:    .asciz "  CHECK FAILED: loaded bytes differ from the stored ones"
msg_again:       .asciz " the same buffer again"
msg_not_same:    .asciz "  CHECK FAILED: the digest changed"
msg_outside:     .asciz " buffer outside rich RAM at "
msg_digest:      .asciz " digest="
msg_burst:       .asciz ""
msg_burst2:      .asciz " SIGN calls of "
msg_burst3:      .asciz " bytes"
msg_all_ok:      .asciz " -> all ok\n"
msg_burst_bad:   .asciz " failed\n"
msg_done1:       .asciz ""
msg_done2:       .asciz " secure calls done\n"
msg_pass:        .asciz "all self-checks passed\n"
msg_failed:      .asciz " self-check(s) FAILED\n"
newline:         .asciz "\n"

.data
.balign 16
idtr:
    .word   33 * 16 - 1
    .quad   idt
.balign 8
# What the host reads back (memexpose.machine.flagship finds these symbols).
wait_for_link: .quad 1         # 0: call before the link is up (a test sets it)
call_count:   .quad 0          # completed calls in call_log
call_log_ptr: .quad call_log
failures:     .quad 0          # failed self-checks
interrupts:   .quad 0          # return interrupts taken
probe_public: .quad 0          # what BAR1+0 read
probe_beyond: .quad 0          # what BAR1+0x1000 read
mx_bar0:      .quad 0
bar0_size:    .quad 0
bar1_size:    .quad 0
bar1_addr:    .quad 0
pci_slot:     .quad 0
arena:        .quad 0
call_id:      .quad 0
reply_type:   .quad 0
reply_r0:     .quad 0
reply_r1:     .quad 0
reply_r2:     .quad 0
reply_r3:     .quad 0
reply_ready:  .quad 0
last_digest:  .quad 0
last_buf:     .quad 0
last_len:     .quad 0
burst_left:   .quad 0
burst_seed:   .quad 0
burst_bad:    .quad 0
char_buf:     .quad 0
num_buf:      .skip 32

.bss
.balign 16
idt:
    .skip   33 * 16
stored:                        # key, payload, length of what the STOREs put
    .skip   16 * 24
.balign 64
# One entry per call: function id, call id, message, r0 status, r2 value,
# r3 trusted service ticks, rdtsc at the call, rdtsc at the return.
call_log:
    .skip   LOG_MAX * LOG_ENTRY

// mxtee: a tiny trusted OS for the `virt` board (AArch64), served over memexpose.
//
// It finds the memexpose platform device in the device tree, derives a
// secret key into its own RAM, publishes a 4 KiB public page, enables the
// link and then sleeps in `wfi`. Each memexpose interrupt is a secure call
// from the rich VM: RX_TYPE = function id, RX_DATA = x1.. (x1 = the rich
// physical address of the message argument, x2 = the call id). The rich
// VM's RAM is reached at window base + rich physical address. The answer
// goes back as an interrupt: TX_TYPE = 1 << 63 | function id, TX_DATA =
// r0 status, r1 call id, r2 value, r3 service time in counter ticks.
// docs/flagship.md describes the ABI; mxtee.inc has its numbers.
//
// Register use: the main loop only sleeps; the IRQ handler saves what it
// uses. x19-x28 are callee-saved in every routine below.
.include "virt.inc"
.include "mxtee.inc"

.equ PUBLIC_PAGE,  0x40070000      // the only trusted RAM the rich VM may reach (TOML: expose)
.equ FDT_MAGIC,    0xd00dfeed
.equ SLOT_SIZE,    (16 + MXTEE_OBJ_MAX)   // key, length, data
.equ SMCCC_NOT_SUPPORTED, -1

.global _start
.text
_start:
    mov     x19, x0                // the device tree, from the board
    adr     x0, vectors
    msr     vbar_el1, x0
    isb
    adr     x9, banner
    bl      uart_puts
    // 1. the memexpose device: registers and window base from the device tree
    mov     x0, x19
    bl      fdt_find_memexpose
    cbz     x2, no_device
    adr     x3, mx_regs
    stp     x0, x1, [x3]           // mx_regs, ns_base
    // 2. the secret key: SipHash of the counter under the firmware's seed key
    mrs     x4, cntvct_el0
    adr     x5, scratch
    str     x4, [x5]
    adr     x0, seed_key
    mov     x1, x5
    mov     x2, #8
    bl      siphash24
    mov     x20, x0
    mrs     x4, cntvct_el0
    eor     x4, x4, x20
    adr     x5, scratch
    str     x4, [x5]
    adr     x0, seed_key
    mov     x1, x5
    mov     x2, #8
    bl      siphash24
    adr     x3, secret_key
    stp     x20, x0, [x3]
    adr     x5, scratch
    str     xzr, [x5]
    mrs     x4, cntfrq_el0
    adr     x3, stats
    str     x4, [x3, #40]          // stats.counter_hz, for the host
    // 3. the public page: magic, API version, object limits
    ldr     x3, =PUBLIC_PAGE
    ldr     x4, =MXTEE_PUBLIC_MAGIC
    str     x4, [x3]
    ldr     x4, =MXTEE_API_VERSION
    str     x4, [x3, #8]
    mov     x4, #MXTEE_SLOTS
    str     x4, [x3, #16]
    mov     x4, #MXTEE_OBJ_MAX
    str     x4, [x3, #24]
    // 4. enable the link (the device connects in the background) and wait for calls
    adr     x9, msg_ready
    bl      uart_puts
    adr     x3, mx_regs
    ldr     x3, [x3]
    ldr     x0, [x3, #MX_WINDOW_SIZE]
    lsr     x0, x0, #20
    bl      put_dec
    adr     x9, msg_ready2
    bl      uart_puts
    adr     x3, mx_regs
    ldr     x0, [x3, #8]
    bl      put_hex
    adr     x9, newline
    bl      uart_puts
    adr     x3, mx_regs
    ldr     x3, [x3]
    mov     w4, #1
    str     w4, [x3, #MX_ENABLE]
    msr     daifclr, #2            // unmask IRQs
idle:
    wfi
    b       idle

no_device:
    adr     x9, msg_no_device
    bl      uart_puts
    brk     #1

// -- the IRQ handler: serve every queued call --------------------------------
irq_handler:
    sub     sp, sp, #176
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x30, [sp, #144]
    stp     x19, x20, [sp, #160]
1:  adr     x19, mx_regs
    ldr     x19, [x19]
    ldr     w0, [x19, #MX_RECV]    // pop one interrupt into RX_*
    cbz     w0, 2f
    bl      serve_call
    b       1b
2:  ldp     x19, x20, [sp, #160]
    ldp     x18, x30, [sp, #144]
    ldp     x16, x17, [sp, #128]
    ldp     x14, x15, [sp, #112]
    ldp     x12, x13, [sp, #96]
    ldp     x10, x11, [sp, #80]
    ldp     x8, x9, [sp, #64]
    ldp     x6, x7, [sp, #48]
    ldp     x4, x5, [sp, #32]
    ldp     x2, x3, [sp, #16]
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #176
    eret

// serve_call: the popped interrupt is in RX_*; answer it through TX_* + SEND.
serve_call:
    stp     x29, x30, [sp, #-96]!
    stp     x19, x20, [sp, #16]
    stp     x21, x22, [sp, #32]
    stp     x23, x24, [sp, #48]
    stp     x25, x26, [sp, #64]
    stp     x27, x28, [sp, #80]
    mrs     x28, cntvct_el0        // service time starts
    adr     x19, mx_regs
    ldr     x19, [x19]             // x19 = registers
    ldr     x20, [x19, #MX_RX_TYPE]    // x20 = function id
    ldr     x21, [x19, #MX_RX_DATA]    // x21 = x1: message argument (rich PA)
    ldr     x22, [x19, #MX_RX_DATA + 8] // x22 = x2: call id
    mov     x24, #0                // x24 = r2 value
    mov     x25, #0                // x25 = the message in the window, once checked
    adr     x3, stats
    ldr     x4, [x3]
    add     x4, x4, #1
    str     x4, [x3]               // stats.calls
    ldr     x3, =MXTEE_VERSION
    cmp     x20, x3
    b.eq    call_version
    add     x4, x3, #1
    cmp     x20, x4
    b.eq    call_store
    add     x4, x3, #2
    cmp     x20, x4
    b.eq    call_load
    add     x4, x3, #3
    cmp     x20, x4
    b.eq    call_sign
    // unknown function: SMCCC NOT_SUPPORTED, the message is not touched
    mov     x23, #SMCCC_NOT_SUPPORTED
    adr     x3, stats
    ldr     x4, [x3, #16]
    add     x4, x4, #1
    str     x4, [x3, #16]          // stats.unknown
    b       reply

call_version:
    mov     x23, #TEE_SUCCESS
    ldr     x24, =MXTEE_API_VERSION
    b       reply

// Message calls: x25 = the message in the window, x26 = key, x27 = rich buffer PA,
// x0 = length; then dispatch again.
call_store:
call_load:
call_sign:
    mov     x0, x21
    mov     x1, #MSG_SIZE
    bl      ns_range
    cbz     x0, bad_params
    tst     x21, #7
    b.ne    bad_params
    mov     x25, x0
    ldr     w3, [x25, #MSG_CMD]
    cmp     w3, w20
    b.ne    bad_params
    ldr     x3, =MXTEE_VERSION
    sub     x3, x20, x3
    cmp     x3, #2
    b.eq    do_load
    b.hi    do_sign
    // STORE(key, buf, len)
    ldr     x26, [x25, #MSG_KEY]
    cbz     x26, bad_params
    ldr     x27, [x25, #MSG_LEN]
    mov     x3, #MXTEE_OBJ_MAX
    cmp     x27, x3
    b.hi    bad_params
    ldr     x0, [x25, #MSG_BUF]
    mov     x1, x27
    bl      ns_range
    cbz     x0, bad_params
    mov     x21, x0                // the payload in the window
    mov     x0, x26
    bl      find_slot
    cbnz    x0, 1f
    mov     x0, #0
    bl      find_slot              // a free slot
    cbz     x0, out_of_memory
1:  str     x26, [x0]
    str     x27, [x0, #8]
    add     x0, x0, #16
    mov     x1, x21
    mov     x2, x27
    bl      copy_bytes             // window -> secure RAM
    adr     x3, stats
    ldr     x4, [x3, #24]
    add     x4, x4, x27
    str     x4, [x3, #24]          // stats.ns_read_bytes
    mov     x24, x27
    mov     x23, #TEE_SUCCESS
    b       msg_reply

do_load:
    // LOAD(key, buf, capacity): out = object size
    ldr     x26, [x25, #MSG_KEY]
    cbz     x26, bad_params
    mov     x0, x26
    bl      find_slot
    cbz     x0, not_found
    mov     x21, x0
    ldr     x24, [x21, #8]         // object size
    ldr     x27, [x25, #MSG_LEN]   // capacity
    cmp     x24, x27
    b.hi    short_buffer
    ldr     x0, [x25, #MSG_BUF]
    mov     x1, x24
    bl      ns_range
    cbz     x0, bad_params
    add     x1, x21, #16
    mov     x2, x24
    bl      copy_bytes             // secure RAM -> window
    adr     x3, stats
    ldr     x4, [x3, #32]
    add     x4, x4, x24
    str     x4, [x3, #32]          // stats.ns_write_bytes
    mov     x23, #TEE_SUCCESS
    b       msg_reply

do_sign:
    // SIGN(buf, len): out = SipHash-2-4 of the payload under the secret key
    ldr     x27, [x25, #MSG_LEN]
    ldr     x0, [x25, #MSG_BUF]
    mov     x1, x27
    bl      ns_range
    cbz     x0, bad_params
    mov     x1, x0
    adr     x0, secret_key
    mov     x2, x27
    bl      siphash24
    mov     x24, x0
    adr     x3, stats
    ldr     x4, [x3, #24]
    add     x4, x4, x27
    str     x4, [x3, #24]          // stats.ns_read_bytes
    mov     x23, #TEE_SUCCESS
    b       msg_reply

short_buffer:
    ldr     x23, =TEE_ERROR_SHORT_BUFFER
    b       msg_reply
not_found:
    ldr     x23, =TEE_ERROR_ITEM_NOT_FOUND
    b       msg_reply
out_of_memory:
    ldr     x23, =TEE_ERROR_OUT_OF_MEMORY
    b       msg_reply
bad_params:
    ldr     x23, =TEE_ERROR_BAD_PARAMETERS
    mov     x24, #0
    cbz     x25, reply             // no usable message: registers only
msg_reply:
    str     w23, [x25, #MSG_RET]
    str     x24, [x25, #MSG_OUT]
    adr     x3, stats
    ldr     x4, [x3, #32]
    add     x4, x4, #12
    str     x4, [x3, #32]          // stats.ns_write_bytes: ret + out
    ldr     x4, [x3, #24]
    add     x4, x4, #MSG_SIZE
    str     x4, [x3, #24]          // stats.ns_read_bytes: the message
reply:
    cbz     x23, 1f
    adr     x3, stats
    ldr     x4, [x3, #8]
    add     x4, x4, #1
    str     x4, [x3, #8]           // stats.errors
1:  mrs     x27, cntvct_el0
    sub     x27, x27, x28          // x27 = service time (counter ticks)
    // The log line comes before SEND: after it the next call may arrive at
    // once, and console MMIO would then hold the machine lock while the
    // link wants it to raise the interrupt.
    adr     x9, msg_call
    bl      uart_puts
    mov     x0, x22
    bl      put_dec
    mov     w0, #' '
    bl      put_char
    mov     x0, x20
    bl      function_name
    mov     x9, x0
    bl      uart_puts
    adr     x9, msg_arrow
    bl      uart_puts
    mov     x0, x23
    bl      status_name
    mov     x9, x0
    bl      uart_puts
    ldr     x3, =MXTEE_SIGN
    cmp     x20, x3
    b.ne    2f
    cbnz    x23, 2f
    adr     x9, msg_digest
    bl      uart_puts
    mov     x0, x24
    bl      put_hex
2:  adr     x9, newline
    bl      uart_puts
    mov     x3, #MXTEE_RETURN_HI
    lsl     x3, x3, #32
    orr     x3, x3, x20
    str     x3, [x19, #MX_TX_TYPE]
    str     x23, [x19, #MX_TX_DATA]       // r0 status
    str     x22, [x19, #MX_TX_DATA + 8]   // r1 call id
    str     x24, [x19, #MX_TX_DATA + 16]  // r2 value
    str     x27, [x19, #MX_TX_DATA + 24]  // r3 service time (counter ticks)
    mov     w3, #1
    str     w3, [x19, #MX_SEND]
    ldp     x27, x28, [sp, #80]
    ldp     x25, x26, [sp, #64]
    ldp     x23, x24, [sp, #48]
    ldp     x21, x22, [sp, #32]
    ldp     x19, x20, [sp, #16]
    ldp     x29, x30, [sp], #96
    ret

// ns_range: x0 = rich physical address, x1 = length -> x0 = its address in the
// window, or 0 when [x0, x0 + x1) is not inside what the rich VM exposes now
// (WINDOW_LIMIT: the window bytes its peer serves).
ns_range:
    adr     x2, mx_regs
    ldr     x3, [x2]
    ldr     x3, [x3, #MX_WINDOW_LIMIT]
    adds    x4, x0, x1
    b.cs    1f                     // wraps
    cmp     x4, x3
    b.hi    1f
    ldr     x3, [x2, #8]           // ns_base
    add     x0, x3, x0
    ret
1:  mov     x0, #0
    ret

// find_slot: x0 = key -> x0 = the slot holding it (key 0: a free slot), or 0.
find_slot:
    adr     x1, storage
    mov     x2, #MXTEE_SLOTS
    ldr     x4, =SLOT_SIZE
1:  ldr     x3, [x1]
    cmp     x3, x0
    b.eq    2f
    add     x1, x1, x4
    subs    x2, x2, #1
    b.ne    1b
    mov     x0, #0
    ret
2:  mov     x0, x1
    ret

// copy_bytes: copy x2 bytes from x1 to x0 (8 at a time while both are aligned).
copy_bytes:
    orr     x3, x0, x1
    tst     x3, #7
    b.ne    2f
1:  cmp     x2, #8
    b.lo    2f
    ldr     x3, [x1], #8
    str     x3, [x0], #8
    sub     x2, x2, #8
    b       1b
2:  cbz     x2, 3f
    ldrb    w3, [x1], #1
    strb    w3, [x0], #1
    sub     x2, x2, #1
    b       2b
3:  ret

// siphash24: SipHash-2-4 of x2 bytes at x1 under the 16-byte key at x0 -> x0.
// Clobbers x0-x15.
.macro sipround
    add     x4, x4, x5
    ror     x5, x5, #(64 - 13)
    eor     x5, x5, x4
    ror     x4, x4, #32
    add     x6, x6, x7
    ror     x7, x7, #(64 - 16)
    eor     x7, x7, x6
    add     x4, x4, x7
    ror     x7, x7, #(64 - 21)
    eor     x7, x7, x4
    add     x6, x6, x5
    ror     x5, x5, #(64 - 17)
    eor     x5, x5, x6
    ror     x6, x6, #32
.endm
siphash24:
    ldp     x8, x9, [x0]           // k0, k1
    ldr     x4, =0x736f6d6570736575
    eor     x4, x4, x8             // v0
    ldr     x5, =0x646f72616e646f6d
    eor     x5, x5, x9             // v1
    ldr     x6, =0x6c7967656e657261
    eor     x6, x6, x8             // v2
    ldr     x7, =0x7465646279746573
    eor     x7, x7, x9             // v3
    lsl     x10, x2, #56           // b = length << 56
    and     x11, x2, #7            // tail bytes
    lsr     x12, x2, #3            // whole words
    tst     x1, #7
    b.ne    3f
1:  cbz     x12, 4f                // aligned words
    ldr     x13, [x1], #8
    eor     x7, x7, x13
    sipround
    sipround
    eor     x4, x4, x13
    sub     x12, x12, #1
    b       1b
3:  cbz     x12, 4f                // unaligned words, byte by byte
    mov     x13, #0
    mov     x14, #0
5:  ldrb    w15, [x1], #1
    lsl     x15, x15, x14
    orr     x13, x13, x15
    add     x14, x14, #8
    cmp     x14, #64
    b.lo    5b
    eor     x7, x7, x13
    sipround
    sipround
    eor     x4, x4, x13
    sub     x12, x12, #1
    b       3b
4:  mov     x14, #0                // the last word: tail bytes | b
6:  cbz     x11, 7f
    ldrb    w15, [x1], #1
    lsl     x15, x15, x14
    orr     x10, x10, x15
    add     x14, x14, #8
    sub     x11, x11, #1
    b       6b
7:  eor     x7, x7, x10
    sipround
    sipround
    eor     x4, x4, x10
    eor     x6, x6, #0xff
    sipround
    sipround
    sipround
    sipround
    eor     x0, x4, x5
    eor     x0, x0, x6
    eor     x0, x0, x7
    ret

// fdt_find_memexpose: x0 = the device tree -> x0 = register base, x1 = window
// base, x2 = window size (x2 = 0: no `memexpose@...` node with a 2 x (2 + 2)-cell reg).
fdt_find_memexpose:
    stp     x29, x30, [sp, #-48]!
    stp     x19, x20, [sp, #16]
    stp     x21, x22, [sp, #32]
    mov     x2, #0
    ldr     w3, [x0]
    rev     w3, w3
    ldr     w4, =FDT_MAGIC
    cmp     w3, w4
    b.ne    9f
    ldr     w3, [x0, #8]
    rev     w3, w3
    add     x19, x0, x3            // x19 = structure block cursor
    ldr     w3, [x0, #12]
    rev     w3, w3
    add     x20, x0, x3            // x20 = strings block
    mov     x21, #0                // x21 = 1 inside the memexpose node
1:  ldr     w3, [x19], #4
    rev     w3, w3
    cmp     w3, #1
    b.eq    2f                     // FDT_BEGIN_NODE
    cmp     w3, #2
    b.eq    3f                     // FDT_END_NODE
    cmp     w3, #3
    b.eq    4f                     // FDT_PROP
    cmp     w3, #4
    b.eq    1b                     // FDT_NOP
    b       9f                     // FDT_END or garbage
2:  mov     x0, x19
    adr     x1, str_memexpose
    bl      has_prefix
    mov     x21, x0
5:  ldrb    w3, [x19], #1          // skip the name and its padding
    cbnz    w3, 5b
    add     x19, x19, #3
    and     x19, x19, #~3
    b       1b
3:  mov     x21, #0
    b       1b
4:  ldr     w22, [x19]             // value length
    rev     w22, w22
    ldr     w3, [x19, #4]          // name offset
    rev     w3, w3
    add     x19, x19, #8
    cbz     x21, 6f
    cmp     w22, #32
    b.ne    6f
    add     x0, x20, x3
    adr     x1, str_reg
    bl      str_equal
    cbz     x0, 6f
    mov     x0, x19
    bl      fdt_u64
    mov     x9, x0                 // register base
    add     x0, x19, #16
    bl      fdt_u64
    mov     x10, x0                // window base
    add     x0, x19, #24
    bl      fdt_u64
    mov     x2, x0                 // window size
    mov     x0, x9
    mov     x1, x10
    b       9f
6:  add     x19, x19, x22
    add     x19, x19, #3
    and     x19, x19, #~3
    b       1b
9:  ldp     x21, x22, [sp, #32]
    ldp     x19, x20, [sp, #16]
    ldp     x29, x30, [sp], #48
    ret

// fdt_u64: the big-endian 64-bit value at x0 -> x0.
fdt_u64:
    ldr     w1, [x0]
    ldr     w2, [x0, #4]
    rev     w1, w1
    rev     w2, w2
    orr     x0, x2, x1, lsl #32
    ret

// has_prefix: x0 = string, x1 = NUL-terminated prefix -> x0 = 1 if it starts x0.
has_prefix:
1:  ldrb    w2, [x1], #1
    cbz     w2, 2f
    ldrb    w3, [x0], #1
    cmp     w2, w3
    b.eq    1b
    mov     x0, #0
    ret
2:  mov     x0, #1
    ret

// str_equal: x0, x1 = NUL-terminated strings -> x0 = 1 if they are equal.
str_equal:
1:  ldrb    w2, [x1], #1
    ldrb    w3, [x0], #1
    cmp     w2, w3
    b.ne    2f
    cbnz    w2, 1b
    mov     x0, #1
    ret
2:  mov     x0, #0
    ret

// function_name: x0 = function id -> x0 = its name.
function_name:
    ldr     x1, =MXTEE_VERSION
    sub     x1, x0, x1
    cmp     x1, #3
    b.hi    1f
    adr     x0, names
    add     x0, x0, x1, lsl #3
    ret
1:  adr     x0, name_unknown
    ret

// status_name: x0 = status -> x0 = its name.
status_name:
    adr     x1, statuses
1:  ldr     x2, [x1]
    ldr     x3, [x1, #8]
    cbz     x3, 2f
    cmp     x2, x0
    b.eq    2f
    add     x1, x1, #16
    b       1b
2:  mov     x0, x3
    cbnz    x0, 3f
    adr     x0, status_other
3:  ret

// put_char: print the byte in w0. Clobbers x9-x12.
put_char:
    adr     x9, char_buf
    strb    w0, [x9]
    strb    wzr, [x9, #1]
    b       uart_puts

// put_hex: print x0 as 0x and its hex digits (no leading zeros). Clobbers x0-x5, x9-x12.
put_hex:
    stp     x29, x30, [sp, #-16]!
    adr     x1, num_buf
    mov     w2, #'0'
    strb    w2, [x1]
    mov     w2, #'x'
    strb    w2, [x1, #1]
    add     x1, x1, #2
    clz     x3, x0                 // the highest non-zero digit's shift
    mov     x4, #63
    sub     x3, x4, x3
    and     x3, x3, #~3            // 0, 4, ..., 60 (x0 = 0: fixed below)
    cbnz    x0, 1f
    mov     x3, #0
1:  lsr     x4, x0, x3
    and     x4, x4, #15
    cmp     x4, #10
    add     x5, x4, #'0'
    add     x4, x4, #('a' - 10)
    csel    x4, x5, x4, lo
    strb    w4, [x1], #1
    subs    x3, x3, #4
    b.pl    1b
    strb    wzr, [x1]
    adr     x9, num_buf
    bl      uart_puts
    ldp     x29, x30, [sp], #16
    ret

// put_dec: print x0 in decimal. Clobbers x0-x5, x9-x12.
put_dec:
    stp     x29, x30, [sp, #-16]!
    adr     x1, num_buf + 31
    strb    wzr, [x1]
    mov     x2, #10
1:  udiv    x3, x0, x2
    msub    x4, x3, x2, x0
    add     x4, x4, #'0'
    strb    w4, [x1, #-1]!
    mov     x0, x3
    cbnz    x0, 1b
    mov     x9, x1
    bl      uart_puts
    ldp     x29, x30, [sp], #16
    ret

.include "lib.s"

.balign 0x800
vectors:
    .skip   0x280
    b       irq_handler            // current EL with SPx, IRQ
    .skip   0x800 - 0x284

.section .rodata
.balign 8
// The firmware's seed key: the secret key is derived from it and the
// counter at boot, so it exists only in this VM's RAM (secret_key).
seed_key:
    .quad   0x0706050403020100, 0x0f0e0d0c0b0a0908
names:                             // 8 bytes each
    .asciz  "VERSION"
    .asciz  "STORE\0\0"
    .asciz  "LOAD\0\0\0"
    .asciz  "SIGN\0\0\0"
.balign 8
statuses:
    .quad   TEE_SUCCESS, status_ok
    .quad   TEE_ERROR_BAD_PARAMETERS, status_bad
    .quad   TEE_ERROR_ITEM_NOT_FOUND, status_not_found
    .quad   TEE_ERROR_OUT_OF_MEMORY, status_oom
    .quad   TEE_ERROR_SHORT_BUFFER, status_short
    .quad   -1, status_not_supported
    .quad   0, 0
name_unknown:
    .asciz  "unknown"
status_ok:
    .asciz  "ok"
status_bad:
    .asciz  "BAD_PARAMETERS"
status_not_found:
    .asciz  "ITEM_NOT_FOUND"
status_oom:
    .asciz  "OUT_OF_MEMORY"
status_short:
    .asciz  "SHORT_BUFFER"
status_not_supported:
    .asciz  "NOT_SUPPORTED"
status_other:
    .asciz  "error"
str_memexpose:
    .asciz  "memexpose@"
str_reg:
    .asciz  "reg"
banner:
    .asciz  "mxtee trusted OS 1.0 (AArch64) booting\n"
msg_ready:
    .asciz  "secret key derived into secure RAM; window onto the rich RAM: "
msg_ready2:
    .asciz  " MiB at "
msg_no_device:
    .asciz  "mxtee: no memexpose@ node in the device tree: add a memexpose-platform device\n"
msg_call:
    .asciz  "call "
msg_arrow:
    .asciz  " -> "
msg_digest:
    .asciz  " digest="
newline:
    .asciz  "\n"

.data
.balign 8
// What the host reads back (memexpose.machine.flagship finds these symbols).
mx_regs:
    .quad   0                      // register block
    .quad   0                      // window base: rich physical address 0
stats:
    .quad   0                      // calls
    .quad   0                      // errors (non-zero status)
    .quad   0                      // unknown function ids
    .quad   0                      // bytes read from rich RAM
    .quad   0                      // bytes written to rich RAM
    .quad   0                      // counter frequency (Hz): r3 ticks -> seconds
char_buf:
    .skip   8
num_buf:
    .skip   32

.bss
.balign 16
secret_key:
    .skip   16
scratch:
    .skip   16
storage:
    .skip   MXTEE_SLOTS * SLOT_SIZE

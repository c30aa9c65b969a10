// Shared routines for the aarch64 guests (included at the end of each one).

// uart_puts: print the NUL-terminated string at x9. Clobbers x9-x12.
uart_puts:
    ldr     x10, =UART_BASE
    mov     w11, #0x301            // UARTEN | TXE | RXE
    str     w11, [x10, #UART_CR]
1:  ldrb    w11, [x9], #1
    cbz     w11, 3f
2:  ldr     w12, [x10, #UART_FR]
    tst     w12, #UART_FR_TXFF
    b.ne    2b
    str     w11, [x10, #UART_DR]
    b       1b
3:  ret

// power_off: PSCI SYSTEM_OFF through hvc (the board's PSCI conduit).
power_off:
    ldr     x0, =PSCI_SYSTEM_OFF
    hvc     #0
    hlt     #0                     // not reached: the machine stops

/*
 * vmstate_gdb aarch64 test guest: freestanding, no interrupts, polled PL011 console.
 * Built with -ffixed-x18 -mgeneral-regs-only: x18 (set to 1 in boot.S) and the FP/SIMD registers
 * are never touched by C code, so edits of them show in the TICK lines / stay as edited.
 */
typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long u64;

#define UART        0x09000000UL    /* PL011, identity-mapped device memory */
#define UART_DR     0x00
#define UART_FR     0x18
#define UART_CR     0x30
#define FR_TXFF     (1 << 5)
#define VIRTIO_MMIO 0x0a000000UL    /* 32 transports of 0x200 bytes */
#define VIRTIO_MAGIC 0x74726976u    /* "virt" */

volatile u8 guest_mac[6];
volatile u64 tick;
volatile u64 guest_magic = 0x5641534d454d4753UL;   /* "SGMEMSAV" */
volatile u64 guest_nic_base;                       /* virtio-mmio transport of the NIC, 0 if none */
volatile u64 guest_psci_result = ~0UL;             /* PSCI CPU_ON's return for vCPU 1 (0: started) */
__attribute__((section(".guestnote"), aligned(4096), used))
char guest_note[4096];

static inline u32 rd32(u64 a) { return *(volatile u32 *)a; }
static inline u8 rd8(u64 a) { return *(volatile u8 *)a; }
static inline void wr32(u64 a, u32 v) { *(volatile u32 *)a = v; }

static inline u64 read_x18(void)
{
    u64 v;
    __asm__ volatile("mov %0, x18" : "=r"(v));
    return v;
}

static inline u64 counter(void)
{
    u64 v;
    __asm__ volatile("isb; mrs %0, cntvct_el0" : "=r"(v));
    return v;
}

static inline u64 counter_hz(void)
{
    u64 v;
    __asm__ volatile("mrs %0, cntfrq_el0" : "=r"(v));
    return v;
}

static void putch(char c)
{
    while (rd32(UART + UART_FR) & FR_TXFF)
        ;
    wr32(UART + UART_DR, (u8)c);
}

static void puts(const char *s)
{
    while (*s)
        putch(*s++);
}

static void putdec(u64 v)
{
    char buf[24];
    int i = 0;
    do {
        buf[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (i)
        putch(buf[--i]);
}

static const char hexdig[] = "0123456789abcdef";

static void puthex(u64 v)
{
    int shift = 60;
    puts("0x");
    while (shift > 0 && !((v >> shift) & 0xf))
        shift -= 4;
    for (; shift >= 0; shift -= 4)
        putch(hexdig[(v >> shift) & 0xf]);
}

static void putmac(const volatile u8 *m)
{
    for (int i = 0; i < 6; i++) {
        if (i)
            putch(':');
        putch(hexdig[m[i] >> 4]);
        putch(hexdig[m[i] & 0xf]);
    }
}

static void nic_read_hw(u8 *m)
{
    for (int i = 0; i < 6; i++)
        m[i] = guest_nic_base ? rd8(guest_nic_base + 0x100 + i) : 0;
}

static void nic_init(void)
{
    for (int i = 0; i < 32; i++) {
        u64 base = VIRTIO_MMIO + 0x200UL * i;
        if (rd32(base) == VIRTIO_MAGIC && rd32(base + 8) == 1) {    /* DeviceID 1: network */
            guest_nic_base = base;
            break;
        }
    }
    u8 m[6];
    nic_read_hw(m);
    for (int i = 0; i < 6; i++)
        guest_mac[i] = m[i];
}

__attribute__((noinline)) void guest_print_tick(void)
{
    u8 hw[6];
    nic_read_hw(hw);
    puts("TICK ");
    putdec(tick);
    puts(" sw=");
    putmac(guest_mac);
    puts(" hw=");
    if (guest_nic_base)
        putmac(hw);
    else
        puts("none");
    puts(" x18=");
    puthex(read_x18());
    puts(" note=");
    for (int i = 0; i < 4096 && guest_note[i]; i++) {
        char c = guest_note[i];
        putch(c >= 0x20 && c <= 0x7e ? c : '?');
    }
    putch('\n');
}

void kmain(void)
{
    wr32(UART + UART_CR, 0x301);    /* UARTEN | TXE | RXE */
    nic_init();
    puts("\nGUEST READY nic=");
    puts(guest_nic_base ? "virtio-net-mmio" : "none");
    puts(" bar=");
    puthex(guest_nic_base);
    puts(" cpu1=");
    puthex(guest_psci_result);
    putch('\n');
    u64 hz = counter_hz(), last = counter();
    tick++;
    guest_print_tick();
    for (;;) {
        u64 now = counter();
        if (now - last >= hz) {
            last += hz;
            if (now - last >= hz)   /* a long pause (a snapshot): one tick, not a burst */
                last = now;
            tick++;
            guest_print_tick();
        }
    }
}

/*
 * vmstate_gdb test guest: freestanding x86_64 kernel, no interrupts.
 * Compiled with -ffixed-r12: no C code here ever reads or writes r12
 * except the explicit inline asm in read_r12().
 */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

/* ---- Globals of interest (real symbols, see README.md) --------------- */
volatile unsigned char guest_mac[6];        /* .bss, 4 KiB page: MAC read once at boot */
volatile unsigned long tick;                /* .bss, 4 KiB page: TICK counter */
volatile unsigned long guest_magic = 0x5641534d454d4753UL;  /* .data, 4 KiB page */
/* Own section at phys 0x200000 (2 MiB page); never written by the guest. */
__attribute__((section(".bss.guest_note"), aligned(4096), used))
char guest_note[4096];

/* Extra info for tools. */
volatile unsigned long guest_nic_bar;       /* BAR0 base (MMIO phys or I/O port), 0 if none */
volatile unsigned int guest_nic_kind;       /* 0 none, 1 e1000, 2 rtl8139, 3 virtio-net */

enum { NIC_NONE = 0, NIC_E1000 = 1, NIC_RTL8139 = 2, NIC_VIRTIO = 3 };
static const char *const nic_names[] = { "none", "e1000", "rtl8139", "virtio-net" };

/* ---- Port I/O ---------------------------------------------------------- */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port) : "memory"); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port) : "memory"); return v; }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port) : "memory"); }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port) : "memory"); return v; }
static inline u32 mmio_read32(u64 phys) { return *(volatile u32 *)phys; }  /* identity map (1 GiB pages) */

static inline u64 read_r12(void)
{
    u64 v;
    __asm__ volatile("movq %%r12, %0" : "=r"(v));
    return v;
}

/* ---- Serial (COM1, polled) ------------------------------------------- */
#define COM1 0x3f8

static void serial_init(void)
{
    outb(COM1 + 1, 0x00);   /* no interrupts */
    outb(COM1 + 3, 0x80);   /* DLAB */
    outb(COM1 + 0, 0x01);   /* 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);   /* 8N1 */
    outb(COM1 + 2, 0xc7);   /* FIFO on, cleared */
    outb(COM1 + 4, 0x03);   /* DTR | RTS, OUT2 off (no IRQ) */
}

static void putch(char c)
{
    while (!(inb(COM1 + 5) & 0x20))
        ;
    outb(COM1, (u8)c);
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

static void puthex(u64 v)   /* 0x..., no leading zeros */
{
    int shift = 60;
    puts("0x");
    while (shift > 0 && !((v >> shift) & 0xf))
        shift -= 4;
    for (; shift >= 0; shift -= 4)
        putch(hexdig[(v >> shift) & 0xf]);
}

static void putmac(const u8 *m)
{
    for (int i = 0; i < 6; i++) {
        if (i)
            putch(':');
        putch(hexdig[m[i] >> 4]);
        putch(hexdig[m[i] & 0xf]);
    }
}

/* ---- PCI (legacy configuration mechanism #1) -------------------------- */
static u32 pci_read(u32 dev, u32 fn, u32 off)
{
    outl(0xcf8, 0x80000000u | (dev << 11) | (fn << 3) | (off & 0xfc));
    return inl(0xcfc);
}

static void pci_write(u32 dev, u32 fn, u32 off, u32 v)
{
    outl(0xcf8, 0x80000000u | (dev << 11) | (fn << 3) | (off & 0xfc));
    outl(0xcfc, v);
}

/* Fallback addresses, only used if the firmware left BAR0 unassigned. */
#define FALLBACK_MMIO 0xfeb00000u
#define FALLBACK_IO   0xe000u

static u64 pci_bar0(u32 dev, u32 fn, int want_io)
{
    u32 bar = pci_read(dev, fn, 0x10);
    u64 base;

    if (bar & 1) {
        base = bar & ~3u;
    } else {
        base = bar & ~0xfu;
        if ((bar & 6) == 4)
            base |= (u64)pci_read(dev, fn, 0x14) << 32;
    }
    if (base == 0) {
        pci_write(dev, fn, 0x10, want_io ? FALLBACK_IO : FALLBACK_MMIO);
        if (!want_io && (bar & 6) == 4)
            pci_write(dev, fn, 0x14, 0);
        base = want_io ? FALLBACK_IO : FALLBACK_MMIO;
    }
    /* enable I/O and memory decoding (status half written as 0: no RW1C clears) */
    u32 cmd = pci_read(dev, fn, 0x04) & 0xffff;
    pci_write(dev, fn, 0x04, cmd | (want_io ? 1u : 2u));
    return base;
}

static void nic_read_hw(u8 *m)
{
    u64 b = guest_nic_bar;

    switch (guest_nic_kind) {
    case NIC_E1000: {
        u32 ral = mmio_read32(b + 0x5400);
        u32 rah = mmio_read32(b + 0x5404);
        m[0] = (u8)ral; m[1] = (u8)(ral >> 8); m[2] = (u8)(ral >> 16); m[3] = (u8)(ral >> 24);
        m[4] = (u8)rah; m[5] = (u8)(rah >> 8);
        break;
    }
    case NIC_RTL8139:
        for (int i = 0; i < 6; i++)
            m[i] = inb((u16)(b + i));
        break;
    case NIC_VIRTIO:    /* legacy virtio-pci, MSI-X off: device config at 0x14 */
        for (int i = 0; i < 6; i++)
            m[i] = inb((u16)(b + 0x14 + i));
        break;
    default:
        for (int i = 0; i < 6; i++)
            m[i] = 0;
    }
}

static void nic_init(void)
{
    for (u32 dev = 0; dev < 32; dev++) {
        for (u32 fn = 0; fn < 8; fn++) {
            u32 id = pci_read(dev, fn, 0x00);
            if ((id & 0xffff) == 0xffff) {
                if (fn == 0)
                    break;
                continue;
            }
            if (id == 0x100e8086u) {                /* e1000 */
                guest_nic_bar = pci_bar0(dev, fn, 0);
                guest_nic_kind = NIC_E1000;
            } else if (id == 0x813910ecu) {         /* rtl8139 */
                guest_nic_bar = pci_bar0(dev, fn, 1);
                guest_nic_kind = NIC_RTL8139;
            } else if (id == 0x10001af4u) {         /* legacy/transitional virtio-net */
                u32 bar = pci_read(dev, fn, 0x10);
                if (bar & 1) {
                    guest_nic_bar = pci_bar0(dev, fn, 1);
                    guest_nic_kind = NIC_VIRTIO;
                }
            }
            if (guest_nic_kind != NIC_NONE)
                goto found;
            if (fn == 0 && !((pci_read(dev, fn, 0x0c) >> 16) & 0x80))
                break;                              /* single-function device */
        }
    }
found:;
    u8 m[6];
    nic_read_hw(m);
    for (int i = 0; i < 6; i++)
        guest_mac[i] = m[i];
}

/* ---- CMOS RTC ------------------------------------------------------------ */
static u8 rtc_seconds(void)
{
    for (;;) {
        outb(0x70, 0x0a);
        if (!(inb(0x71) & 0x80))        /* update in progress? */
            break;
    }
    outb(0x70, 0x00);
    return inb(0x71);
}

/* ---- Main loop --------------------------------------------------------- */
__attribute__((noinline)) void guest_print_tick(void)
{
    u8 sw[6], hw[6];

    for (int i = 0; i < 6; i++)
        sw[i] = guest_mac[i];
    puts("TICK ");
    putdec(tick);
    puts(" sw=");
    putmac(sw);
    puts(" hw=");
    if (guest_nic_kind == NIC_NONE) {
        puts("none");
    } else {
        nic_read_hw(hw);
        putmac(hw);
    }
    puts(" r12=");
    puthex(read_r12());
    puts(" note=");
    const volatile char *n = guest_note;
    for (int i = 0; i < (int)sizeof(guest_note) && n[i]; i++) {
        char c = n[i];
        putch((c >= 0x20 && c < 0x7f) ? c : '?');   /* keep it one line */
    }
    putch('\n');
}

void kmain(void)
{
    u8 last = 0xff;

    serial_init();
    nic_init();
    putch('\n');       /* firmware output may have left a partial line */
    puts("GUEST READY nic=");
    puts(nic_names[guest_nic_kind]);
    puts(" bar=");
    puthex(guest_nic_bar);
    putch('\n');

    for (;;) {
        u8 s = rtc_seconds();
        if (s != last) {
            last = s;
            tick = tick + 1;
            guest_print_tick();
        }
        __asm__ volatile("pause");
    }
}

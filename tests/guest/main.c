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

/* RAM sizes from the PVH memory map (bytes; 0 if there is no map), see
 * mem_init().  On QEMU they equal its below-/above-4G RAM split. */
volatile unsigned long guest_ram_below_4g;  /* top of low RAM, incl. firmware carve-outs */
volatile unsigned long guest_ram_above_4g;  /* type-1 RAM at or above 4 GiB */
volatile unsigned long guest_ram_usable_below_4g;  /* type-1 RAM below 4 GiB only */
/* Physical addresses of the 64-byte "VMSTATE-HIGHMEM 0x..." markers,
 * 0 = not written: [0] first RAM page >= 4 GiB, [1] last RAM page above
 * 4 GiB, [2] last RAM page below 4 GiB. */
volatile unsigned long guest_marker_addr[3];
/* Debugger command: 0 nothing, 1 pvpanic (then reset to 0 by the guest). */
volatile unsigned long guest_command;

extern volatile unsigned long guest_pvh_start_info;  /* boot.S: %ebx at entry */
extern volatile u64 boot_pdpt_low[512];              /* boot.S: identity PDPT */

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

/* ---- PVH memory map and high-memory markers ---------------------------- */
/* Layout of struct hvm_start_info / hvm_memmap_table_entry (PVH ABI). */
struct pvh_start_info {
    u32 magic, version, flags, nr_modules;
    u64 modlist_paddr, cmdline_paddr, rsdp_paddr;
    u64 memmap_paddr;                   /* version >= 1 */
    u32 memmap_entries, reserved;
};
struct pvh_memmap_entry {
    u64 addr, size;
    u32 type, reserved;
};
#define PVH_START_MAGIC   0x336ec578u
#define E820_RAM          1
#define GIB               (1UL << 30)
#define FOUR_GIB          (4UL << 30)
#define PAGE              0x1000UL
#define IDMAP_MAX         (64UL << 30)  /* identity map grows up to here */
#define MARKER_MIN        0x1000000UL   /* never put a marker below 16 MiB (image) */

static u64 idmap_top = 16UL << 30;      /* boot.S maps 0..16 GiB */

/* Map [16 GiB, top) with 1 GiB identity pages, capped at IDMAP_MAX. */
static void idmap_extend(u64 top)
{
    u64 n = (top + GIB - 1) / GIB;
    int changed = 0;

    if (n > IDMAP_MAX / GIB)
        n = IDMAP_MAX / GIB;
    for (u64 i = idmap_top / GIB; i < n; i++) {
        boot_pdpt_low[i] = (i << 30) | 0x83;            /* P | RW | PS */
        changed = 1;
    }
    if (changed) {
        idmap_top = n * GIB;
        u64 cr3;
        __asm__ volatile("movq %%cr3, %0; movq %0, %%cr3" : "=r"(cr3) :: "memory");
    }
}

/* 64 bytes at phys: "VMSTATE-HIGHMEM 0x<phys hex>", NUL-padded. */
static void write_marker(int slot, u64 phys)
{
    static const char prefix[] = "VMSTATE-HIGHMEM 0x";
    volatile char *p = (volatile char *)phys;    /* identity map */
    int i = 0, shift = 60;

    if (phys < MARKER_MIN || phys + 64 > idmap_top)
        return;
    for (const char *c = prefix; *c; c++)
        p[i++] = *c;
    while (shift > 0 && !((phys >> shift) & 0xf))
        shift -= 4;
    for (; shift >= 0; shift -= 4)
        p[i++] = hexdig[(phys >> shift) & 0xf];
    while (i < 64)
        p[i++] = 0;
    guest_marker_addr[slot] = phys;
}

/*
 * Read the PVH memory map (QEMU's pvh.bin fills it from the firmware's
 * INT 15h/E820 table, so SeaBIOS's own reservations are cut out of RAM).
 *  below: end of the highest type-1 range below 4 GiB, extended over
 *         ranges of any type that directly follow it (SeaBIOS reserves the
 *         top 128 KiB or so of low RAM for its tables); low RAM starts at 0,
 *         so this is its size.
 *  above: bytes of type-1 RAM at or above 4 GiB.
 * Markers: (a) first RAM page >= 4 GiB, (b) last RAM page above 4 GiB,
 *          (c) below - 4 KiB, i.e. the page just under the split.
 */
static void mem_init(void)
{
    const struct pvh_start_info *si = (const struct pvh_start_info *)guest_pvh_start_info;
    u64 low_top = 0, high_first = ~0UL, high_top = 0, usable = 0, above = 0;

    if (!si || si->magic != PVH_START_MAGIC || si->version < 1 || !si->memmap_paddr)
        return;
    const struct pvh_memmap_entry *e = (const struct pvh_memmap_entry *)si->memmap_paddr;
    u32 n = si->memmap_entries;
    if (n > 128)
        n = 128;
    for (u32 i = 0; i < n; i++) {
        u64 start = e[i].addr, end = e[i].addr + e[i].size;
        if (e[i].type != E820_RAM || end <= start)
            continue;
        if (start < FOUR_GIB) {                         /* part below 4 GiB */
            u64 lend = end < FOUR_GIB ? end : FOUR_GIB;
            usable += lend - start;
            if (lend > low_top)
                low_top = lend;
        }
        if (end > FOUR_GIB) {                           /* part at/above 4 GiB */
            u64 hstart = start > FOUR_GIB ? start : FOUR_GIB;
            above += end - hstart;
            hstart = (hstart + PAGE - 1) & ~(PAGE - 1);
            if (hstart < high_first)
                high_first = hstart;
            if (end > high_top)
                high_top = end;
        }
    }
    /* Grow low_top over adjacent non-RAM ranges (firmware carve-outs). */
    for (int changed = low_top != 0; changed; ) {
        changed = 0;
        for (u32 i = 0; i < n; i++) {
            u64 start = e[i].addr, end = e[i].addr + e[i].size;
            if (end > FOUR_GIB)
                end = FOUR_GIB;
            if (start <= low_top && end > low_top) {
                low_top = end;
                changed = 1;
            }
        }
    }
    guest_ram_below_4g = low_top;
    guest_ram_above_4g = above;
    guest_ram_usable_below_4g = usable;

    if (high_top)
        idmap_extend(high_top);
    high_top &= ~(PAGE - 1);
    if (high_top && high_first + PAGE <= high_top) {
        write_marker(0, high_first);                    /* (a) */
        write_marker(1, high_top - PAGE);               /* (b) */
    }
    low_top &= ~(PAGE - 1);
    if (low_top >= PAGE)
        write_marker(2, low_top - PAGE);                /* (c) */
}

/* ---- pvpanic ------------------------------------------------------------- */
#define PVPANIC_PORT      0x505         /* QEMU -device pvpanic (ISA) */
#define PVPANIC_PANICKED  1

/* Print GUEST PANIC and report a panic to QEMU (GUEST_PANICKED event). */
__attribute__((noinline)) void guest_pvpanic(void)
{
    puts("GUEST PANIC\n");
    outb(PVPANIC_PORT, PVPANIC_PANICKED);
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
    mem_init();
    putch('\n');       /* firmware output may have left a partial line */
    puts("GUEST READY nic=");
    puts(nic_names[guest_nic_kind]);
    puts(" bar=");
    puthex(guest_nic_bar);
    putch('\n');
    puts("GUEST MEM below=");
    puthex(guest_ram_below_4g);
    puts(" above=");
    puthex(guest_ram_above_4g);
    putch('\n');

    for (;;) {
        if (inb(COM1 + 5) & 0x01) {     /* LSR data ready: one byte per pass */
            if (inb(COM1) == 'p')
                guest_pvpanic();
        }
        if (guest_command == 1) {
            guest_pvpanic();
            guest_command = 0;
        }
        u8 s = rtc_seconds();
        if (s != last) {
            last = s;
            tick = tick + 1;
            guest_print_tick();
        }
        __asm__ volatile("pause");
    }
}

/*
 * vmstate_gdb aarch64 test guest: entry at EL1 with the MMU off (QEMU virt, -kernel ELF, no
 * firmware). Sets up the page tables below, turns the MMU on, jumps to the higher half, starts
 * vCPU 1 through PSCI CPU_ON (hvc) and calls kmain. vCPU 1 loads known values into x0-x30 and
 * waits in wfi forever.
 *
 * TTBR0_EL1 (T0SZ=25, 39-bit, walk from level 1): identity, two 1 GiB blocks:
 *   0x00000000-0x3fffffff device nGnRnE (UART, virtio-mmio), 0x40000000-0x7fffffff normal memory
 * TTBR1_EL1 (T1SZ=16, 48-bit, walk from level 0): KERNEL_VA + physical for 16 MiB of RAM:
 *   0x40000000-0x401fffff as 512 4 KiB pages (the image), 0x40200000-0x40ffffff as 2 MiB blocks
 */
#define KERNEL_VA   0xffff800000000000
#define DESC_TABLE  3
#define DESC_PAGE   3
#define DESC_BLOCK  1
#define AF          (1 << 10)
#define SH_INNER    (3 << 8)
#define ATTR_DEVICE (0 << 2)
#define ATTR_NORMAL (1 << 2)
#define NORMAL      (AF | SH_INNER | ATTR_NORMAL)
#define PSCI_CPU_ON 0xc4000003
#define PSCI_OFF    0x84000008
/* MAIR: attr0 = 0x00 (Device-nGnRnE), attr1 = 0xff (Normal WB) */
#define MAIR        0xff00
/* TCR: T0SZ=25, IRGN0=ORGN0=WB, SH0=inner, TG0=4K; T1SZ=16, IRGN1=ORGN1=WB, SH1=inner, TG1=4K;
 * IPS=40 bits */
#define TCR         (25 | (1 << 8) | (1 << 10) | (3 << 12) | (0 << 14) | \
                     (16 << 16) | (1 << 24) | (1 << 26) | (3 << 28) | (2 << 30) | (2 << 32))

    .section .boot, "ax"
    .global _start
_start:
    bl      mmu_setup
    ldr     x0, =high_entry
    br      x0

    .global secondary_start
secondary_start:
    bl      mmu_setup
    ldr     x0, =secondary_high
    br      x0

/* MAIR, TCR, both TTBRs, FP on (CPACR_EL1.FPEN=3), then the MMU. */
mmu_setup:
    ldr     x1, =MAIR
    msr     mair_el1, x1
    ldr     x1, =TCR
    msr     tcr_el1, x1
    ldr     x1, =pt_id_l1 - KERNEL_VA
    msr     ttbr0_el1, x1
    ldr     x1, =pt_hi_l0 - KERNEL_VA
    msr     ttbr1_el1, x1
    mov     x1, #(3 << 20)
    msr     cpacr_el1, x1
    isb
    mrs     x1, sctlr_el1
    orr     x1, x1, #1          /* M */
    orr     x1, x1, #(1 << 2)   /* C */
    orr     x1, x1, #(1 << 12)  /* I */
    msr     sctlr_el1, x1
    isb
    ret
    .ltorg

    .text
high_entry:
    ldr     x0, =boot_stack_top
    mov     sp, x0
    ldr     x0, =vectors
    msr     vbar_el1, x0
    isb
    /* known FP/SIMD state: v0..v3 and FPCR/FPSR (C is built without FP registers) */
    ldr     x0, =0x0123456789abcdef
    ldr     x1, =0xfedcba9876543210
    fmov    d0, x0
    mov     v0.d[1], x1
    fmov    d1, x1
    mov     v1.d[1], x0
    ldr     x0, =0x4141414142424242
    fmov    d2, x0
    mov     v2.d[1], xzr
    ldr     x0, =0x3ff0000000000000  /* 1.0 */
    fmov    d3, x0
    ldr     x0, =0x01c00000          /* FPCR: FZ, RMode=toward zero */
    msr     fpcr, x0
    ldr     x0, =0x08000000          /* FPSR: QC */
    msr     fpsr, x0
    /* start vCPU 1 (MPIDR 1) at secondary_start, physical */
    ldr     x0, =PSCI_CPU_ON
    mov     x1, #1
    ldr     x2, =secondary_start
    mov     x3, #0
    hvc     #0
    ldr     x1, =guest_psci_result
    str     x0, [x1]
    mov     x18, #1             /* the register the TICK line prints (-ffixed-x18) */
    mov     x29, #0
    bl      kmain
1:  b       1b

secondary_high:
    ldr     x0, =vectors
    msr     vbar_el1, x0
    ldr     x0, =secondary_stack_top
    mov     sp, x0
    /* x<n> = 0xa64c0de000000000 + n, x30 too */
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30
    ldr     x\n, =(0xa64c0de000000000 + \n)
    .endr
    .global secondary_park
secondary_park:
    wfi
    b       secondary_park
    .ltorg

/* Any exception: say so on the UART, then PSCI SYSTEM_OFF (QEMU exits, the harness notices). */
    .balign 2048
vectors:
    .rept 16
    .balign 128
    b       guest_exception
    .endr
guest_exception:
    ldr     x0, =0x09000000
    mov     w1, #'!'
    strb    w1, [x0]
    ldr     x0, =PSCI_OFF
    hvc     #0
1:  b       1b
    .ltorg

    .section .pagetables, "aw"
    .balign 4096
    .global pt_id_l1, pt_hi_l0
pt_id_l1:                       /* TTBR0, level 1: 512 x 1 GiB */
    .quad 0x00000000 | AF | ATTR_DEVICE | DESC_BLOCK
    .quad 0x40000000 | NORMAL | DESC_BLOCK
    .fill 510, 8, 0
pt_hi_l0:                       /* TTBR1, level 0: entry 256 covers KERNEL_VA */
    .fill 256, 8, 0
    .quad pt_hi_l1 - KERNEL_VA + DESC_TABLE
    .fill 255, 8, 0
pt_hi_l1:                       /* level 1: entry 1 covers KERNEL_VA + 1 GiB */
    .quad 0
    .quad pt_hi_l2 - KERNEL_VA + DESC_TABLE
    .fill 510, 8, 0
pt_hi_l2:                       /* level 2: 4 KiB pages for the first 2 MiB, then 2 MiB blocks */
    .quad pt_hi_l3 - KERNEL_VA + DESC_TABLE
    .set blk, 1
    .rept 7
    .quad (0x40000000 + blk * 0x200000) | NORMAL | DESC_BLOCK
    .set blk, blk + 1
    .endr
    .fill 504, 8, 0
pt_hi_l3:
    .set pg, 0
    .rept 512
    .quad (0x40000000 + pg * 0x1000) | NORMAL | DESC_PAGE
    .set pg, pg + 1
    .endr

    .bss
    .balign 16
boot_stack:
    .skip 16384
boot_stack_top:
secondary_stack:
    .skip 4096
secondary_stack_top:

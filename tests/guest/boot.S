/*
 * PVH entry and long-mode setup for the vmstate_gdb test guest.
 *
 * QEMU (>= 4.0, -kernel ELF with a XEN_ELFNOTE_PHYS32_ENTRY note) enters
 * pvh_start in 32-bit protected mode, paging off, flat segments, with
 * %ebx = physical address of struct hvm_start_info.
 *
 * Everything is linked at KERNEL_VMA + physical; PA(x) gives the physical
 * address used before paging is on.
 */
    .cfi_sections .debug_frame  /* CFI for gdb (.eh_frame is discarded) */

#define KERNEL_VMA 0xffffffff80000000
#define PA(x) ((x) - KERNEL_VMA)

#define PTE_P    0x001
#define PTE_RW   0x002
#define PTE_PWT  0x008
#define PTE_PCD  0x010
#define PTE_PS   0x080

/* ---- Xen PVH entry note (type 18 = XEN_ELFNOTE_PHYS32_ENTRY) ---------- */
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4                     /* n_namesz: "Xen\0" */
    .long 8                     /* n_descsz: QEMU reads a 64-bit value for ELF64 */
    .long 18                    /* n_type */
    .asciz "Xen"
    .quad PA(pvh_start)

/* ---- 32-bit entry (runs at physical addresses) ------------------------ */
    .section .boot.text, "ax", @progbits
    .code32
    .globl pvh_start
    .type pvh_start, @function
pvh_start:
    cli
    cld
    movl %ebx, PA(guest_pvh_start_info)

    /* CR4.PAE */
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4

    /* CR3 = PML4 */
    movl $PA(boot_pml4), %eax
    movl %eax, %cr3

    /* EFER.LME */
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr

    /* CR0.PG | CR0.PE | CR0.WP */
    movl %cr0, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0

    lgdt PA(boot_gdt_ptr32)
    ljmp $0x08, $PA(long_entry_low)
    .size pvh_start, . - pvh_start

    .code64
long_entry_low:
    /* Still at the identity-mapped low address; jump to the higher half. */
    movabsq $long_entry_high, %rax
    jmp *%rax

long_entry_high:
    .cfi_startproc
    .cfi_undefined rip          /* outermost frame: stop gdb's unwinder here */
    lgdt boot_gdt_ptr64
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %eax, %eax
    movl %eax, %fs
    movl %eax, %gs
    movq $boot_stack_top, %rsp
    xorl %ebp, %ebp

    /* r12 is reserved (-ffixed-r12): the guest sets it once and never
     * touches it again; a debugger may change it while the vCPU is stopped. */
    movq $1, %r12

    call kmain
1:  hlt
    jmp 1b
    .cfi_endproc

/* ---- GDT ------------------------------------------------------------- */
    .section .data, "aw", @progbits
    .p2align 3
boot_gdt:
    .quad 0                     /* 0x00 null */
    .quad 0x00af9a000000ffff    /* 0x08 64-bit code, DPL0 */
    .quad 0x00cf92000000ffff    /* 0x10 data, DPL0 */
boot_gdt_end:

    .p2align 1
boot_gdt_ptr32:
    .word boot_gdt_end - boot_gdt - 1
    .long PA(boot_gdt)

    .p2align 1
boot_gdt_ptr64:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .p2align 3
    .globl guest_pvh_start_info
guest_pvh_start_info:           /* physical address of hvm_start_info */
    .quad 0

/* ---- Page tables (4-level; 1 GiB, 2 MiB and 4 KiB pages) -------------
 *
 *  PML4[0]   -> boot_pdpt_low : PDPT[0..15] = 1 GiB pages, identity 0..16 GiB
 *                                (PDPT[3], 3..4 GiB MMIO hole: PCD|PWT;
 *                                 PDPT[16..63] added by kmain, up to the top
 *                                 of RAM, at most 64 GiB)
 *  PML4[511] -> boot_pdpt_high: PDPT[510] -> boot_pd_high
 *      boot_pd_high[0]    -> boot_pt_low: 512 x 4 KiB pages, phys 0..2 MiB
 *                            (virt 0xffffffff80000000..0xffffffff801fffff)
 *      boot_pd_high[1..7] =  2 MiB pages, phys 2..16 MiB
 *                            (virt 0xffffffff80200000..0xffffffff80ffffff)
 */
    .section .data.pagetables, "aw", @progbits
    .p2align 12
    .globl boot_pml4, boot_pdpt_low, boot_pdpt_high, boot_pd_high, boot_pt_low
boot_pml4:
    .quad PA(boot_pdpt_low) + (PTE_P | PTE_RW)
    .fill 510, 8, 0
    .quad PA(boot_pdpt_high) + (PTE_P | PTE_RW)

    .p2align 12
boot_pdpt_low:
    .quad (0 << 30) | (PTE_P | PTE_RW | PTE_PS)
    .quad (1 << 30) | (PTE_P | PTE_RW | PTE_PS)
    .quad (2 << 30) | (PTE_P | PTE_RW | PTE_PS)
    .quad (3 << 30) | (PTE_P | PTE_RW | PTE_PS | PTE_PCD | PTE_PWT)
    /* PDPT[4..15]: identity 4..16 GiB (RAM above the PCI hole).  kmain()
     * fills PDPT[16..63] at run time if RAM reaches above 16 GiB. */
    .set .Lgb, 4
    .rept 12
    .quad (.Lgb << 30) | (PTE_P | PTE_RW | PTE_PS)
    .set .Lgb, .Lgb + 1
    .endr
    .fill 496, 8, 0

    .p2align 12
boot_pdpt_high:
    .fill 510, 8, 0
    .quad PA(boot_pd_high) + (PTE_P | PTE_RW)
    .quad 0

    .p2align 12
boot_pd_high:
    .quad PA(boot_pt_low) + (PTE_P | PTE_RW)
    .set .Lpg, 1
    .rept 7
    .quad (.Lpg << 21) | (PTE_P | PTE_RW | PTE_PS)
    .set .Lpg, .Lpg + 1
    .endr
    .fill 504, 8, 0

    .p2align 12
boot_pt_low:
    .set .Lpg, 0
    .rept 512
    .quad (.Lpg << 12) | (PTE_P | PTE_RW)
    .set .Lpg, .Lpg + 1
    .endr

/* ---- Stack ------------------------------------------------------------ */
    .section .bss, "aw", @nobits
    .p2align 12
    .globl boot_stack, boot_stack_top
boot_stack:
    .skip 16384
boot_stack_top:

    .section .note.GNU-stack, "", @progbits

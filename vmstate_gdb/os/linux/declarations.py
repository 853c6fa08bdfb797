"""The types of the kernel's global variables, which BTF does not carry.

pahole before 1.26 (which built the BTF of every distribution kernel of 2022-2024) encodes only
per-CPU variables; kallsyms gives the address of every global but not its type. This is the list of
globals drgn's helpers and our commands read, declared as the kernel source declares them (a
name's type has been stable across the kernels we read; where it changed, both spellings are
listed under their own names). A variable the running kernel lacks is simply not found; one
whose type the BTF lacks fails on lookup with drgn's own message.

``[]`` stands for arrays whose length is a configuration constant (NR_CPUS, MAX_NUMNODES, ...):
subscripting them is all the helpers do.
"""

from __future__ import annotations

import re
from collections.abc import Callable

GLOBALS: dict[str, str] = {
    # tasks, pids, namespaces (include/linux/sched/task.h, pid_namespace.h, ...)
    "init_task": "struct task_struct",
    "init_pid_ns": "struct pid_namespace",
    "init_user_ns": "struct user_namespace",
    "init_uts_ns": "struct uts_namespace",
    "init_ipc_ns": "struct ipc_namespace",
    "init_net": "struct net",
    "init_mm": "struct mm_struct",
    "init_files": "struct files_struct",
    "init_fs": "struct fs_struct",
    "kthreadd_task": "struct task_struct *",
    "nr_threads": "int",
    "root_task_group": "struct task_group",
    "cgrp_dfl_root": "struct cgroup_root",
    "task_struct_cachep": "struct kmem_cache *",
    "task_state_array": "const char * const []",
    "net_namespace_list": "struct list_head",
    # CPUs (kernel/cpu.c, arch/x86/kernel/setup_percpu.c)
    "__per_cpu_offset": "unsigned long []",
    "nr_cpu_ids": "unsigned int",
    "__cpu_online_mask": "struct cpumask",
    "__cpu_possible_mask": "struct cpumask",
    "__cpu_present_mask": "struct cpumask",
    "__cpu_active_mask": "struct cpumask",
    # the vDSO every process maps (arch/x86/entry/vdso/vdso-image-64.c)
    "vdso_image_64": "const struct vdso_image",
    # modules (kernel/module/main.c)
    "modules": "struct list_head",
    # kernel log (kernel/printk/printk.c; log_buf is the pre-5.10 path)
    "prb": "struct printk_ringbuffer *",
    "printk_rb_static": "struct printk_ringbuffer",
    "clear_seq": "struct latched_seq",
    "log_buf": "char *",
    "console_drivers": "struct console *",
    # boot facts
    "linux_banner": "const char []",
    "saved_command_line": "char *",
    "system_state": "enum system_states",
    "tainted_mask": "unsigned long",
    "panic_cpu": "atomic_t",
    "oops_in_progress": "int",
    "jiffies": "volatile unsigned long",
    "jiffies_64": "u64",
    "avenrun": "unsigned long [3]",
    # memory layout (arch/x86/mm/kaslr.c, mm/sparse.c, mm/memblock.c, ...)
    "page_offset_base": "unsigned long",
    "vmemmap_base": "unsigned long",
    "vmalloc_base": "unsigned long",
    "phys_base": "unsigned long",
    "max_pfn": "unsigned long",
    "max_low_pfn": "unsigned long",
    "min_low_pfn": "unsigned long",
    "high_memory": "void *",
    "mem_section": "struct mem_section **",
    "__highest_present_section_nr": "unsigned long",
    "node_data": "struct pglist_data *[]",
    "node_states": "nodemask_t []",
    "nr_node_ids": "unsigned int",
    "memblock": "struct memblock",
    "_totalram_pages": "atomic_long_t",
    "vm_zone_stat": "atomic_long_t []",
    "vm_node_stat": "atomic_long_t []",
    "vm_numa_event": "atomic_long_t []",
    "vm_committed_as": "struct percpu_counter",
    "sysctl_overcommit_ratio": "int",
    "sysctl_overcommit_kbytes": "unsigned long",
    "slab_caches": "struct list_head",
    "vmap_area_list": "struct list_head",
    "vmap_area_root": "struct rb_root",
    "hugetlb_max_hstate": "int",
    "hstates": "struct hstate []",
    "swap_info": "struct swap_info_struct *[]",
    "nr_swapfiles": "unsigned int",
    "total_swap_pages": "long",
    "nr_swap_pages": "atomic_long_t",
    "swapper_pg_dir": "pgd_t []",
    # interrupts (kernel/irq/irqdesc.c: a radix tree until 6.5, then a maple tree)
    "nr_irqs": "int",
    "irq_desc_tree": "struct radix_tree_root",
    "sparse_irqs": "struct maple_tree",
    "idt_table": "gate_desc []",
    # BPF (kernel/bpf/syscall.c, btf.c)
    "prog_idr": "struct idr",
    "map_idr": "struct idr",
    "link_idr": "struct idr",
    "btf_idr": "struct idr",
    # devices and file systems
    "pci_root_buses": "struct list_head",
    "block_class": "struct class",
    "chrdevs": "struct char_device_struct *[255]",
    "cdev_map": "struct kobj_map *",
    "blockdev_superblock": "struct super_block *",
    "super_blocks": "struct list_head",
    "sysfs_root_kn": "struct kernfs_node *",
}


def _state_strings(
    read_pointer: Callable[[int], int], read_string: Callable[[int], bytes], address: int
) -> int:
    """task_state_array holds "R (running)", "S (sleeping)", ... (nine of them since Linux 4.14);
    kallsyms' size runs to the next symbol, so count the entries that look like one."""
    count = 0
    while count < 32:
        try:
            text = read_string(read_pointer(address + 8 * count))
        except Exception:  # noqa: BLE001 - a wild pointer ends the array
            break
        if not re.fullmatch(rb"[A-Za-z] \([a-z ]+\)", text):
            break
        count += 1
    return count


#: arrays whose length only their contents tell: name -> counter(read_pointer, read_string, address)
LENGTH_FROM_CONTENTS = {"task_state_array": _state_strings}

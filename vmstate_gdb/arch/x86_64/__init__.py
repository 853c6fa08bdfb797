"""x86_64 guests: the `cpu` section layout, page-table walks, and the gdb register set."""

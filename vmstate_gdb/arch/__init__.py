"""Guest architectures: register layouts and page tables."""

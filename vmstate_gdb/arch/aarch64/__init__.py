"""aarch64 guests (filled in below)."""

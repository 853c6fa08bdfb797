#!/bin/bash
# The main job on the bundled default: boot the small test guest, snapshot it, open the snapshot
# in gdb, change its MAC, save, resume in QEMU and show the new TICK lines.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VMSTATE_SKIP_LINUX=1 bash "$ROOT/tools/bootstrap.sh"
exec "$ROOT/.venv/bin/python" "$ROOT/tools/demo.py" "$@"

#!/bin/bash
# The test suite: sets up what it needs (tools/bootstrap.sh), then runs pytest.
#   ./run-tests.sh              everything (real QEMU 7.2 and 10 guests, gdb)
#   ./run-tests.sh -m unit      the quick unit tests only
#   ./run-tests.sh tests/test_save.py -k e1000
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bash "$ROOT/tools/bootstrap.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest "$@"

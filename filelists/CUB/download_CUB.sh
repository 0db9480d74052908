#!/usr/bin/env bash
# Download (or, with --source DIR, read CUB_200_2011.tgz from an offline copy), validate,
# unpack and index CUB-200-2011 into filelists/CUB/ (or DATA_DIR/CUB with --data_dir DATA_DIR).
# Usage: filelists/CUB/download_CUB.sh [--source DIR] [--data_dir DATA_DIR]
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../prepare.sh" CUB "$@"

#!/usr/bin/env bash
# Download (or, with --source DIR, read from an offline copy), validate, unpack and index
# EMNIST into filelists/emnist/ (or DATA_DIR/emnist with --data_dir DATA_DIR).
# Usage: filelists/emnist/download_emnist.sh [--source DIR] [--data_dir DATA_DIR]
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../prepare.sh" emnist "$@"

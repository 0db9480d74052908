#!/usr/bin/env bash
# Download (or, with --source DIR, read from an offline copy), validate, unpack and index
# Omniglot into filelists/omniglot/ (or DATA_DIR/omniglot with --data_dir DATA_DIR).
# Usage: filelists/omniglot/download_omniglot.sh [--source DIR] [--data_dir DATA_DIR]
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../prepare.sh" omniglot "$@"

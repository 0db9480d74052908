#!/usr/bin/env bash
# Download (or, with --source DIR, read from an offline copy), validate, unpack and index
# Omniglot into filelists/omniglot/ (or DATA_DIR/omniglot with --data_dir DATA_DIR).
# Usage: filelists/omniglot/download_omniglot.sh [--source DIR] [--data_dir DATA_DIR]
set -euo pipefail

# The Python module runs from the repository root, so relative --source / --data_dir values,
# which the caller meant from their own folder, are made absolute before the cd.
args=()
previous=""
for arg in "$@"; do
  case "$previous" in
    --source | --data_dir) [[ "$arg" == /* || "$arg" == "~"* ]] || arg="$PWD/$arg" ;;
  esac
  case "$arg" in
    --source=[!/~]* | --data_dir=[!/~]*) arg="${arg%%=*}=$PWD/${arg#*=}" ;;
  esac
  args+=("$arg")
  previous="$arg"
done

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
exec "${PYTHON:-python}" -m data.prepare omniglot ${args[@]+"${args[@]}"}

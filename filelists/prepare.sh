#!/usr/bin/env bash
# Shared by download_omniglot.sh and download_emnist.sh: runs `python -m data.prepare NAME`
# from the repository root. Relative --source / --data_dir values, meant from the caller's
# folder, are made absolute before the cd.
# Usage: filelists/prepare.sh NAME [--source DIR] [--data_dir DATA_DIR]
set -euo pipefail

name=$1
shift
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

cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python}" -m data.prepare "$name" ${args[@]+"${args[@]}"}

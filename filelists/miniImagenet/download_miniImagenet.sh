#!/usr/bin/env bash
# Build mini-ImageNet in filelists/miniImagenet/ (or DATA_DIR/miniImagenet with --data_dir)
# from --source DIR: Ravi and Larochelle's train.csv, val.csv and test.csv, beside either
# ImageNet's ILSVRC2012_img_train/ class folders or the distributed mini-ImageNet images/.
# ImageNet's images are not public, so --source is needed (without it only the split files
# are downloaded, and the script says what is missing).
# Usage: filelists/miniImagenet/download_miniImagenet.sh --source DIR [--data_dir DATA_DIR]
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../prepare.sh" miniImagenet "$@"

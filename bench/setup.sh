#!/usr/bin/env bash
# What the benches use beyond the project's venv: wrk, the load generator whose figures
# bench/README.md reports (without it the benches fall back to a Python client that costs the
# machine more). Debian/Ubuntu; run as root.
set -euo pipefail
if ! command -v wrk >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
wrk --version 2>&1 | head -n1 || true

#!/usr/bin/env bash
# Installs what RelayPACS needs on a fresh Debian 12 machine: Debian packages (when
# missing), then .venv with the pinned Python requirements. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# nginx-core: the tests run deploy/nginx/relaypacs.conf with it; docker-compose: they check
# docker-compose.yml with `docker-compose config` (no Docker engine is needed for either).
APT_PACKAGES="orthanc orthanc-dicomweb dcmtk dicom3tools libarchive13 chromium libpango-1.0-0 libpangoft2-1.0-0 poppler-utils prometheus nginx-core docker-compose"

missing=""
for pkg in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  echo "Installing Debian packages:$missing"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
  # Debian starts its own Orthanc service on 8042/4242; RelayPACS runs its own instance.
  if command -v systemctl >/dev/null && systemctl is-active --quiet orthanc 2>/dev/null; then
    $SUDO systemctl stop orthanc || true
    $SUDO systemctl disable orthanc || true
  fi
  # Likewise Debian's nginx (the tests start their own on free ports).
  if command -v systemctl >/dev/null && systemctl is-active --quiet nginx 2>/dev/null; then
    $SUDO systemctl stop nginx || true
    $SUDO systemctl disable nginx || true
  fi
  # Likewise Debian's Prometheus (its promtool checks deploy/prometheus; tests start their own).
  if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl stop prometheus || true
    $SUDO systemctl disable prometheus || true
  fi
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -r requirements-dev.txt
  echo "$want" > "$stamp"
fi

# The PWA, served by Django at /: rebuilt when its sources are newer than the build.
if [ ! -f frontend/dist/index.html ] || [ -n "$(find frontend/src frontend/index.html frontend/package-lock.json frontend/vite.config.ts -newer frontend/dist/index.html 2>/dev/null | head -1)" ]; then
  (cd frontend && npm ci --no-audit --no-fund && npm run build)
fi

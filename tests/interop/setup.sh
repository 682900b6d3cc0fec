#!/usr/bin/env bash
# Installs the pinned clients the interop tests drive (package-lock.json fixes every version):
# the TypeScript SDK, mcp-remote, the conformance suite, Ajv, and Node 22 (the suite needs it).
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error

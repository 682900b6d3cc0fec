#!/usr/bin/env bash
# Installs the pinned clients the interop tests drive (package-lock.json fixes every version):
# the TypeScript SDK, mcp-remote, the conformance suite, Ajv, and Node 22 (the suite needs it).
# Nothing is fetched when node_modules already holds those versions (scripts/npm-ci-once).
set -euo pipefail
cd "$(dirname "$0")"
../../scripts/npm-ci-once .

#!/bin/bash
# The soak checker (tests/soak/check.mjs) can fail: a clean synthetic
# history passes and every doctored one is reported (tests/soak/selftest.mjs,
# which prints its own plan).
cd "$(dirname "$0")/../.." || exit 1
exec node tests/soak/selftest.mjs

#!/bin/bash
# The soak checker (tests/soak/check.mjs) can fail: a clean synthetic
# history passes and every doctored one is reported (tests/soak/selftest.mjs).
cd "$(dirname "$0")/../.."
node tests/soak/selftest.mjs

#!/usr/bin/env bash
# Builds the backfill-coordinator and backfill-agent packages, .deb and .rpm, into
# target/packages/. Installs cargo-deb and cargo-generate-rpm (--locked) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked
command -v cargo-generate-rpm >/dev/null 2>&1 || cargo install cargo-generate-rpm --locked

# The packaged coordinator leaves out `dev` (which links the whole agent: cgroups, NVML,
# drivers); `cargo run -p backfill-coordinator -- dev` keeps it (a default feature).
cargo build --release --locked -p backfill-coordinator --no-default-features
cargo build --release --locked -p backfill-agent
# backfillctl, a crate of its own, ships in the backfill-coordinator packages.
cargo build --release --locked -p backfill-ctl
out=target/packages
rm -rf "$out"
mkdir -p "$out"
for pkg in coordinator agent; do
    cargo deb --no-build --locked --strip -p "backfill-$pkg" --output "$out/"
    # The rpm takes the release binaries as they are: strip a copy for it.
    cargo generate-rpm -p "$pkg" --output "$out/"
done
ls -l "$out"

#!/usr/bin/env bash
# CI: builds the packages and checks them. The .debs are unpacked into a scratch root with
# dpkg and checked for files, modes, conffiles and maintainer scripts, and lintian must find
# no error; the .rpms are listed with rpm (files, modes, config files, scripts).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v lintian >/dev/null 2>&1 || need+=(lintian)
command -v rpm >/dev/null 2>&1 || need+=(rpm)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

packaging/build.sh
out=target/packages
fail() { echo "packaging check: $*" >&2; exit 1; }

# path mode owner, as dpkg-deb -c prints them
expect_deb() {
    local deb=$1 path=$2 mode=$3
    dpkg-deb -c "$deb" | awk -v p="./$path" -v m="$mode" '$6 == p && $1 == m {found=1} END {exit !found}' \
        || { dpkg-deb -c "$deb" >&2; fail "$deb: no $path with mode $mode"; }
}

for pkg in coordinator agent; do
    deb=$(ls "$out"/backfill-"$pkg"_*.deb)
    echo "== $deb"
    expect_deb "$deb" "usr/bin/backfill-$pkg" "-rwxr-xr-x"
    expect_deb "$deb" "usr/lib/systemd/system/backfill-$pkg.service" "-rw-r--r--"
    control=$(mktemp -d)
    dpkg-deb -e "$deb" "$control"
    grep -qx "/etc/backfill/$pkg.toml" "$control/conffiles" || fail "$deb: config is not a conffile"
    grep -q "deb-systemd-helper enable" "$control/postinst" || fail "$deb: postinst does not enable the unit"
    if grep -Eq "deb-systemd-invoke (start|restart)" "$control/postinst"; then
        fail "$deb: postinst starts the unit (it must only enable it)"
    fi
    grep -q 'daemon-reload' "$control/postrm" "$control/postinst" || fail "$deb: no daemon-reload"
    grep -q 'purge' "$control/postrm" || fail "$deb: postrm keeps state on purge"
    # Unpack into a scratch root: files and modes as installed.
    root=$(mktemp -d)
    mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates"
    touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
    dpkg --root="$root" --force-not-root --force-depends --unpack "$deb" >/dev/null
    test -x "$root/usr/bin/backfill-$pkg" || fail "$deb: binary not installed"
    # Unpacked, not configured: a conffile waits as .dpkg-new until configure.
    conf="$root/etc/backfill/$pkg.toml"
    [ -f "$conf" ] || conf="$conf.dpkg-new"
    test -f "$conf" || fail "$deb: config not installed"
    # The packaged coordinator is the coordinator only: no dev mode, so no agent inside.
    if [ "$pkg" = coordinator ] && "$root/usr/bin/backfill-coordinator" dev --help >/dev/null 2>&1; then
        fail "$deb: the packaged coordinator has dev mode (and links the agent)"
    fi
    lintian --fail-on error --suppress-tags statically-linked-binary "$deb"
done
stat -c '%a' "$conf" | grep -qx 600 || fail "agent.toml is not 0600"
# backfillctl (crate backfill-ctl) ships with the coordinator.
expect_deb "$(ls "$out"/backfill-coordinator_*.deb)" usr/bin/backfillctl "-rwxr-xr-x"
grep -q " /usr/bin/backfillctl$" <<<"$(rpm -qlvp "$(ls "$out"/backfill-coordinator-*.rpm)")" \
    || fail "coordinator rpm: no backfillctl"
# The agent's drivers: QEMU and an OCI runtime are recommended, not required.
agent_deb=$(ls "$out"/backfill-agent_*.deb)
recommends=$(dpkg-deb -f "$agent_deb" Recommends)
for want in qemu-system-x86 "runc | crun"; do
    grep -qF "$want" <<<"$recommends" || fail "$agent_deb: does not recommend $want"
done

for pkg in coordinator agent; do
    rpmf=$(ls "$out"/backfill-"$pkg"-*.rpm)
    echo "== $rpmf"
    # rpm's output is taken whole first: with pipefail, `rpm | grep -q` fails whenever grep
    # stops reading before rpm has written everything (SIGPIPE).
    files=$(rpm -qlvp "$rpmf")
    configs=$(rpm -qcp "$rpmf")
    scripts=$(rpm -qp --scripts "$rpmf")
    grep -q "/usr/bin/backfill-$pkg" <<<"$files" || fail "$rpmf: no binary"
    grep -qx "/etc/backfill/$pkg.toml" <<<"$configs" || fail "$rpmf: config is not %config"
    grep -q " /usr/lib/systemd/system/backfill-$pkg.service$" <<<"$files" || fail "$rpmf: no unit"
    grep -q "systemctl enable" <<<"$scripts" || fail "$rpmf: scripts do not enable"
done
weak=$(rpm -qp --recommends "$(ls "$out"/backfill-agent-*.rpm)")
for want in qemu-kvm runc; do
    grep -q "^$want" <<<"$weak" || fail "agent rpm: does not recommend $want"
done
echo "packages ok"

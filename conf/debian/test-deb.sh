#!/bin/sh
# Builds the package, installs it with dpkg -i on a machine where it was not
# installed, and checks what an administrator relies on. Run by CI as root.
set -eu
cd "$(dirname "$0")/../.."
deb=$(conf/debian/build-deb.sh)
dpkg --purge finguard >/dev/null 2>&1 || true
dpkg -i "$deb" >/dev/null
trap 'dpkg --purge finguard >/dev/null 2>&1 || true' EXIT

fail() { echo "package check failed: $*" >&2; exit 1; }
[ "$(command -v finguard)" = /usr/bin/finguard ] || fail "finguard not in /usr/bin"
dpkg-query -W -f='${Conffiles}\n' finguard | grep -q ' /etc/finguard/finguard.toml ' || fail "config is not a conffile"
getent passwd finguard >/dev/null || fail "no finguard system user"
[ "$(stat -c %U /var/log/finguard)" = finguard ] || fail "/var/log/finguard not owned by finguard"
# The installed config passes check, as the service user, as ExecStartPre runs it.
runuser -u finguard -- env FINGUARD_CONFIG=/etc/finguard/finguard.toml /usr/bin/finguard check >/dev/null \
    || fail "finguard check on the installed config"
systemd-analyze verify /lib/systemd/system/finguard.service || fail "systemd-analyze verify"
zcat /usr/share/man/man1/finguard.1.gz | grep -q '^\.TH finguard' || fail "man page"
bash -c '. /usr/share/bash-completion/completions/finguard && complete -p finguard' >/dev/null || fail "bash completion"
if command -v logrotate >/dev/null; then
    logrotate -d /etc/logrotate.d/finguard >/dev/null 2>&1 || fail "logrotate snippet"
fi
# Type=notify readiness (READY=1 once every listener is bound) is tested by
# cargo test (tests/ops.rs); systemd itself does not run here.
echo "package ok: $deb"

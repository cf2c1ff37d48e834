#!/bin/sh
# Builds the Debian package from a release build and prints its path:
#   conf/debian/build-deb.sh   ->  target/debian/finguard_<version>_<arch>.deb
# What cargo-deb would do, with dpkg-deb alone: no extra tool to install.
set -eu
cd "$(dirname "$0")/../.."
cargo build --release --locked --quiet
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
out=target/debian
root=$out/root
rm -rf "$root" "$out/gen"
mkdir -p "$root/DEBIAN"

install -D -m 0755 target/release/finguard "$root/usr/bin/finguard"
install -D -m 0644 conf/debian/finguard.toml "$root/etc/finguard/finguard.toml"
install -D -m 0644 conf/debian/finguard.logrotate "$root/etc/logrotate.d/finguard"
install -D -m 0644 conf/debian/finguard.service "$root/lib/systemd/system/finguard.service"
install -d -m 0750 "$root/var/log/finguard"

# Man page and completions from the binary's own argument definitions.
target/release/finguard generate --out "$out/gen"
install -d "$root/usr/share/man/man1"
gzip -9n <"$out/gen/finguard.1" >"$root/usr/share/man/man1/finguard.1.gz"
install -D -m 0644 "$out/gen/finguard.bash" "$root/usr/share/bash-completion/completions/finguard"
install -D -m 0644 "$out/gen/_finguard" "$root/usr/share/zsh/vendor-completions/_finguard"
install -D -m 0644 "$out/gen/finguard.fish" "$root/usr/share/fish/vendor_completions.d/finguard.fish"

install -d "$root/usr/share/doc/finguard"
gzip -9n <README.md >"$root/usr/share/doc/finguard/README.md.gz"
cat >"$root/usr/share/doc/finguard/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: finguard

Files: *
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPYRIGHT

for script in postinst prerm postrm; do
    install -m 0755 "conf/debian/$script" "$root/DEBIAN/$script"
done
printf '/etc/finguard/finguard.toml\n/etc/logrotate.d/finguard\n' >"$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: finguard
Version: $version
Architecture: $arch
Maintainer: finguard developers <finguard@localhost>
Installed-Size: $size
Depends: libc6 (>= 2.34), adduser
Recommends: logrotate
Section: httpd
Priority: optional
Description: reverse proxy that shields web servers from buggy clients
 finguard stands in front of a web server (Apache httpd above all): it
 closes client connections with a lingering close, applies a keep-alive
 policy per User-Agent, pools backend connections and reaps idle and
 half-closed sockets, so that neither FIN_WAIT_2 nor CLOSE_WAIT builds up.
CONTROL

deb="$out/finguard_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"

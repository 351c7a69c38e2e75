#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (installed if missing):
# target/debian/l4mesh_<version>-1_<arch>.deb holding /usr/bin/l4mesh, the
# systemd unit (/lib/systemd/system/l4mesh.service, not enabled: `systemctl
# enable --now l4mesh`), the example config /etc/l4mesh/l4mesh.toml (a
# conffile: an upgrade keeps your edits), /etc/logrotate.d/l4mesh and the
# Grafana dashboard under /usr/share/l4mesh/.
#
#   bash scripts/package.sh          build it
#   bash scripts/package.sh --test   build it, then (as root) install it with
#                                    dpkg -i, check the installed files and run
#                                    `l4mesh --check -c /etc/l4mesh/l4mesh.toml`,
#                                    and purge it again; refuses if an l4mesh
#                                    package is installed already (CI runs this)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
  echo "== cargo-deb is missing: cargo install cargo-deb --locked"
  cargo install cargo-deb --locked
fi
cargo deb --quiet
deb=$(ls -t target/debian/l4mesh_*.deb | head -n 1)
echo "== built $deb"
dpkg-deb --info "$deb" | sed -n '/Package:/,/Description:/p'

[[ ${1:-} == --test ]] || exit 0
[[ $(id -u) == 0 ]] || { echo "package.sh --test: run as root (dpkg -i)" >&2; exit 2; }
if dpkg -s l4mesh >/dev/null 2>&1; then
  echo "package.sh --test: an l4mesh package is installed already; not touching it" >&2
  exit 2
fi
trap 'dpkg --purge l4mesh >/dev/null 2>&1 || true' EXIT
dpkg -i "$deb"
for file in /usr/bin/l4mesh /etc/l4mesh/l4mesh.toml /lib/systemd/system/l4mesh.service \
  /etc/logrotate.d/l4mesh /usr/share/l4mesh/grafana/l4mesh.json; do
  [[ -e $file ]] || { echo "package.sh --test: $file is not installed" >&2; exit 1; }
done
dpkg -s l4mesh | grep -q '^Status: install ok installed' || { echo "not installed" >&2; exit 1; }
/usr/bin/l4mesh --check -c /etc/l4mesh/l4mesh.toml
/usr/bin/l4mesh --version
if command -v logrotate >/dev/null; then logrotate --debug /etc/logrotate.d/l4mesh 2>&1 | tail -n 3; fi
dpkg --purge l4mesh
trap - EXIT
for file in /usr/bin/l4mesh /etc/l4mesh/l4mesh.toml /lib/systemd/system/l4mesh.service; do
  [[ ! -e $file ]] || { echo "package.sh --test: $file is left after purge" >&2; exit 1; }
done
echo "== installed, checked and purged $deb"

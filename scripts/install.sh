#!/usr/bin/env bash
# Installs sluice as a systemd service:
#   /usr/local/bin/sluice                      the binary (built here with the `dist`
#                                              profile, or --binary)
#   /etc/systemd/system/sluice.service         the unit (scripts/service/sluice.service)
#   /etc/sluice/sluice.toml                    an example config, unless one exists
#   /var/lib/sluice                            working directory (state, checkpoints)
#   /usr/local/share/doc/sluice/               operations.md, configuration.md
# and a system user `sluice`. Then: systemctl daemon-reload && systemctl enable --now sluice
#
#   scripts/install.sh [--binary PATH] [--destdir DIR] [--no-user]
#
# --destdir stages everything under DIR (for packaging and for the test,
# which also passes --no-user: no account is created and nothing is chowned).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
binary="" destdir="" make_user=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --destdir) destdir="$2"; shift 2 ;;
        --no-user) make_user=0; shift ;;
        *) echo "install.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
if [[ -z "$binary" ]]; then
    echo "==> building sluice (the dist profile: release with fat LTO, slower to build, smaller and leaner)" >&2
    cargo build --profile dist -p sluice --manifest-path "$root/Cargo.toml" >&2
    binary="$root/target/dist/sluice"
fi
[[ -x "$binary" ]] || { echo "install.sh: $binary is not an executable" >&2; exit 1; }

install -D -m 0755 "$binary" "$destdir/usr/local/bin/sluice"
install -D -m 0644 "$root/scripts/service/sluice.service" "$destdir/etc/systemd/system/sluice.service"
install -d -m 0750 "$destdir/etc/sluice" "$destdir/var/lib/sluice"
if [[ ! -e "$destdir/etc/sluice/sluice.toml" ]]; then
    install -m 0640 "$root/examples/service/sluice.toml" "$destdir/etc/sluice/sluice.toml"
fi
install -D -m 0644 -t "$destdir/usr/local/share/doc/sluice" "$root/docs/operations.md" "$root/docs/configuration.md"

if [[ $make_user == 1 ]]; then
    if ! id sluice >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/sluice --shell /usr/sbin/nologin sluice
    fi
    chown -R root:sluice "$destdir/etc/sluice"
    chown -R sluice:sluice "$destdir/var/lib/sluice"
fi
echo "installed; now: systemctl daemon-reload && systemctl enable --now sluice" >&2

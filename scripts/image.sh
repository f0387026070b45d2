#!/usr/bin/env bash
# Builds the sluice OCI image from scratch with buildah: no base image is
# pulled. The image holds the binary, exactly the shared libraries it links
# (read from ldd), CA certificates, a passwd/group naming the non-root user
# `sluice` (65532), and the directories it uses. No shell, no package manager.
#
#   scripts/image.sh [--binary PATH] [--tag NAME] [--strip]
#
#   --binary  the sluice binary to package (default: a `dist` build made here,
#             release with fat LTO; see Cargo.toml)
#   --tag     the image name (default sluice:latest)
#   --strip   package a stripped copy of the binary (for debug builds)
#
# Run it (config and plugins mounted; the admin API on 9090):
#   podman run -v ./etc:/etc/sluice:ro -e SLUICE_ADMIN_TOKEN=… -p 9090:9090 sluice:latest
# Installs buildah from Debian when it is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
binary="" tag="sluice:latest" strip=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        --strip) strip=1; shift ;;
        *) echo "image.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
if ! command -v buildah >/dev/null; then
    echo "==> installing buildah (apt)" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >/dev/null
fi
if [[ -z "$binary" ]]; then
    echo "==> building sluice (the dist profile: release with fat LTO, slower to build, smaller and leaner)" >&2
    cargo build --profile dist -p sluice --manifest-path "$root/Cargo.toml" >&2
    binary="$root/target/dist/sluice"
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
install -d "$stage/usr/local/bin" "$stage/etc/ssl/certs" "$stage/etc/sluice" "$stage/tmp" "$stage/var/lib"
chmod 1777 "$stage/tmp"
cp "$binary" "$stage/usr/local/bin/sluice"
if [[ $strip == 1 ]]; then strip "$stage/usr/local/bin/sluice"; fi
# The dynamic loader and every library the binary links, at the paths ldd
# resolved them to (glibc's DNS resolver is built into libc.so.6 since 2.34).
ldd "$binary" | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }' | while read -r lib; do
    install -D -m 0755 "$(readlink -f "$lib")" "$stage$lib"
done
cp /etc/ssl/certs/ca-certificates.crt "$stage/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nsluice:x:65532:65532:sluice:/var/lib/sluice:/sbin/nologin\n' >"$stage/etc/passwd"
printf 'root:x:0:\nsluice:x:65532:\n' >"$stage/etc/group"
printf 'hosts: files dns\n' >"$stage/etc/nsswitch.conf"

export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
container="$(buildah from scratch)"
trap 'buildah rm "$container" >/dev/null 2>&1 || true; rm -rf "$stage"' EXIT
buildah copy --quiet "$container" "$stage" / >/dev/null
# The working directory belongs to the user the host runs as (state,
# checkpoints, the compiled-plugin cache).
mkdir -p "$stage/empty"
buildah copy --quiet --chown 65532:65532 "$container" "$stage/empty" /var/lib/sluice >/dev/null
buildah config \
    --user 65532:65532 \
    --workingdir /var/lib/sluice \
    --entrypoint '["/usr/local/bin/sluice"]' \
    --cmd '["run", "/etc/sluice/sluice.toml"]' \
    --env SLUICE_ADMIN_LISTEN=0.0.0.0:9090 \
    --port 9090/tcp \
    --volume /etc/sluice \
    --volume /var/lib/sluice \
    --stop-signal SIGTERM \
    --label org.opencontainers.image.title=sluice \
    --label org.opencontainers.image.description="WebAssembly-plugin event stream processor" \
    --label "org.opencontainers.image.version=$("$binary" --version | awk '{print $2}')" \
    "$container"
buildah commit --quiet --rm "$container" "$tag" >/dev/null
echo "$tag"

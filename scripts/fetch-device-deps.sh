#!/usr/bin/env bash
# The GPU machine has no network and lacks some -dev packages specula builds against (PCRE2,
# utf8proc, cpp-httplib). This downloads their Debian packages here and unpacks them into
# .deps/sysroot (ignored by git), which travels to the GPU machine; scripts/device-check.sh points
# CMake and pkg-config at it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
root=.deps/sysroot
debs=.deps/device-debs
if [ -f "$root/.complete" ]; then exit 0; fi
mkdir -p "$debs" "$root"
packages=(libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libutf8proc-dev libutf8proc2
          libcpp-httplib-dev libcpp-httplib0.11 libcli11-dev)
(cd "$debs" && apt-get download "${packages[@]}" >/dev/null) || {
  echo "fetch-device-deps: apt-get download failed (is apt reachable?)" >&2; exit 1; }
for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$root"; done
# Make pkg-config files relocatable: they say prefix=/usr, the sysroot variable adds our root.
touch "$root/.complete"
echo "fetch-device-deps: unpacked ${#packages[@]} packages into $root"

#!/usr/bin/env bash
# Install the Debian packages listed in the given files that are not installed yet.
# Usage: tools/install-deps.sh LIST...   (as root; a no-op when everything is present)
set -euo pipefail
# What is present: installed packages and the names they provide. A name an installed package
# provides counts (e.g. npm, bundled with a nodejs build from elsewhere that provides and
# conflicts with it): installing the real package would have apt replace its provider.
declare -A have=()
while IFS='|' read -r status pkg provides; do
  [[ "$status" == "install ok installed" ]] || continue
  have[$pkg]=1
  IFS=',' read -ra names <<<"$provides"
  for name in "${names[@]}"; do
    name="${name%%(*}"
    name="${name// /}"
    [[ -n "$name" ]] && have[$name]=1
  done
done < <(dpkg-query -W -f='${Status}|${Package}|${Provides}\n')
want=()
for list in "$@"; do
  while read -r pkg; do
    [[ -z "$pkg" || "$pkg" == \#* ]] && continue
    [[ -n "${have[$pkg]:-}" ]] || want+=("$pkg")
  done < "$list"
done
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages (run as root to install them): ${want[*]}" >&2
  exit 1
fi
echo "installing: ${want[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Refresh the index once if it is missing or older than a day.
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages' -mtime -1 2>/dev/null | head -1)" ]; then
  apt-get update -qq
fi
apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null

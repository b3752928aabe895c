#!/usr/bin/env bash
# Render a report.html in headless Chromium and write a PNG screenshot, so a person (or an image
# viewer) can check that every table and figure is visible.
#   harness/check-html.sh REPORT.html [OUT.png]
# Installs Debian's `chromium` when missing (needs root and the package mirror).
set -euo pipefail
html=${1:?usage: harness/check-html.sh REPORT.html [OUT.png]}
png=${2:-${html%.html}.png}
[ -f "$html" ] || { echo "check-html: $html not found" >&2; exit 1; }

browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    echo "check-html: installing chromium" >&2
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    browser=$(command -v chromium)
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
abs_html=$(realpath "$html")
abs_png=$(realpath -m "$png")
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars \
    --screenshot="$abs_png" --window-size=1400,${CHECK_HTML_HEIGHT:-4000} \
    "file://$abs_html" 2>"$profile/chromium.log" || { cat "$profile/chromium.log" >&2; exit 1; }
[ -s "$abs_png" ] || { echo "check-html: no screenshot written" >&2; cat "$profile/chromium.log" >&2; exit 1; }
echo "$abs_png"

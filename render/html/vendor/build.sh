#!/usr/bin/env bash
# Rebuild three.min.js (committed, so that neither users nor CI need npm): the pinned three.js and its
# OrbitControls as one minified script that defines the global THREE, with three.js's MIT licence on top.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
cp "$here/package.json" "$here/package-lock.json" "$here/entry.js" "$work/"
(cd "$work" && npm ci --no-audit --no-fund --ignore-scripts >/dev/null \
  && node_modules/.bin/esbuild entry.js --bundle --format=iife --global-name=THREE --minify \
       --legal-comments=none --outfile=bundle.js)
version="$(node -p "require('$work/node_modules/three/package.json').version")"
{ echo "/* three.js $version (https://threejs.org), with OrbitControls, bundled by render/html/vendor/build.sh"
  sed 's/^/   /' "$here/LICENSE-three.txt"
  echo "*/"
  cat "$work/bundle.js"; } > "$here/three.min.js"
rm -rf "$work"

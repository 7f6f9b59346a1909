"""The interactive page, layout.html (`page`): its own code (page.js, page.css, template.html) and three.js
(vendor/three.min.js, pinned, bundled with its licence by vendor/build.sh)."""

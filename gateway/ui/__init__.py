"""The gateway dashboard (GET /ui): server-rendered HTML with inline SVG charts."""

"""meteremu's own HTTP routes: health, metrics, admin, and the CORS wrapper."""

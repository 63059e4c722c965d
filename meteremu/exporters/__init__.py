"""meteremu.exporters."""

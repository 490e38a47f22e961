"""The systemd user units, shipped as package data: ``service install`` writes these files."""

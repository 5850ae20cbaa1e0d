"""Bundled bench files (``qkd-hil run <name>``): single-link, malta-p2mp, template-real."""

"""Jinja2 templates and CSS for each report type (package data, located with importlib.resources)."""

"""Jinja2 templates and CSS per report type (package data, found via importlib.resources)."""

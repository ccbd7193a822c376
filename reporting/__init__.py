"""Figures, HTML rendering (Jinja2), PDF (WeasyPrint), signing and verification (pyHanko).
Imports no Dagster."""

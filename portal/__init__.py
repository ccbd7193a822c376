"""The committee portal: a read-only web page of every signed audit package, verified on view.

:mod:`.urls` (where the portal and its pages are; imported by the Dagster assets) imports no web
framework; the app (:mod:`.app`) is Starlette + Jinja2, served by uvicorn (``clinaudit portal``).
"""

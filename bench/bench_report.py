"""Benchmark: build + render + sign + write + verify the multisite_cxr audit package.

Uses the tables of a finished demo run (``--home``, default ``var/demo``; run ``make demo`` first)
and calls :func:`clinaudit.reporting.cxr_package.write_cxr_package`, the function the
``cxr_audit_package`` asset runs, writing into a temporary reports directory (the demo's own
packages are left alone). Target: under 5 s for the demo.

Baseline measured in the same run: WeasyPrint rendering the same report HTML and figures to a plain
PDF (no attachments, no signature, no verification) — what any report costs; the ratio shows what
the evidence attachments, signing and verification add.

Run: ``.venv/bin/python bench/bench_report.py [--home var/demo] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import weasyprint

from clinaudit.audit.policy import load_policy
from clinaudit.reporting.cxr_package import TABLES, prepare_cxr_report, write_cxr_package
from clinaudit.reporting.report_figures import write_figures
from clinaudit.reporting.signing import ensure_dev_signer

TARGET_S = 5.0


def _tables(home: Path) -> tuple[dict, dict, dict]:
    root = home / "artifacts" / "tables"
    tables = {name: pd.read_parquet(root / name / "__all__.parquet") for name in TABLES}
    per_site = {
        kind: {p.stem: pd.read_parquet(p) for p in sorted((root / kind).glob("*.parquet"))}
        for kind in ("cxr_validated_images", "cxr_quarantine")
    }
    return tables, per_site["cxr_validated_images"], per_site["cxr_quarantine"]


def main() -> None:
    """Time the package path and the plain-render baseline; print the breakdown and ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("var/demo"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not (args.home / "artifacts" / "tables" / "cxr_decisions").exists():
        raise SystemExit(f"no decisions under {args.home}: run `make demo` first")
    tables, validated, quarantine = _tables(args.home)
    policy = load_policy()
    common = dict(
        validated=validated,
        quarantine=quarantine,
        policy=policy,
        landing_root=args.home / "landing",
        artifacts_root=args.home / "artifacts",
    )
    totals, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        signer = ensure_dev_signer(Path(tmp) / "keys")
        for i in range(args.repeat):
            t0 = time.perf_counter()
            result = write_cxr_package(
                tables, signer=signer, reports_root=Path(tmp) / f"reports{i}", **common
            )
            totals.append(time.perf_counter() - t0)
            if not result.package.verdict.ok:
                raise SystemExit("the package did not verify")
            parts = ", ".join(f"{k} {v:.2f} s" for k, v in result.seconds.items())
            print(f"package run {i + 1}: {totals[-1]:.2f} s ({parts}); verified")
        prepared = prepare_cxr_report(tables, signer=signer, **common)
        figures = Path(tmp) / "figures_base"
        write_figures(prepared.figures, figures)
        for i in range(args.repeat):
            t0 = time.perf_counter()
            doc = weasyprint.HTML(string=prepared.html, base_url=str(figures)).render()
            doc.write_pdf(Path(tmp) / f"plain{i}.pdf")
            plain.append(time.perf_counter() - t0)
        pages = len(doc.pages)
    med, base = statistics.median(totals), statistics.median(plain)
    print(f"baseline (plain WeasyPrint render of the same HTML, {pages} pages): {base:.2f} s")
    print(
        f"audit package (view + figures + render + attachments + sign + write + verify): "
        f"{med:.2f} s = {med / base:.1f}x the plain render; target < {TARGET_S:.0f} s: "
        f"{'met' if med < TARGET_S else 'NOT met'}"
    )


if __name__ == "__main__":
    main()

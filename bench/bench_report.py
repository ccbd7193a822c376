"""Benchmark: build + render + sign + write + verify the multisite_cxr audit package.

Uses the stored stages of a finished demo run (``--home``, default ``var/demo``; run ``make demo``
first) and calls :func:`clinaudit.reporting.study_package.write_study_package` with the study's
report, what the ``multisite_cxr/package`` asset runs, writing into a temporary reports directory
(the demo's own packages are left alone). Target: under 5 s for the demo.

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

import weasyprint

from clinaudit.assets.audit_stages import stored_bundle
from clinaudit.assets.resources import ClinauditHome
from clinaudit.reporting.package import stamp_audit
from clinaudit.reporting.signing import ensure_dev_signer
from clinaudit.reporting.study_package import package_inputs, write_study_package
from clinaudit.studies import get_study

TARGET_S = 5.0


def main() -> None:
    """Time the package path and the plain-render baseline; print the breakdown and ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("var/demo"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    study = get_study("multisite_cxr")
    home = ClinauditHome(root=str(args.home))
    if not (home.artifacts / "tables" / study.name / "decisions").exists():
        raise SystemExit(f"no {study.name} decisions under {args.home}: run `make demo` first")
    bundle = stored_bundle(home, study)
    totals, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        signer = ensure_dev_signer(Path(tmp) / "keys")
        for i in range(args.repeat):
            t0 = time.perf_counter()
            result = write_study_package(
                bundle,
                lambda stamp: study.report(bundle, stamp),
                policy_name=study.policy_attachment,
                signer=signer,
                reports_root=Path(tmp) / f"reports{i}",
            )
            totals.append(time.perf_counter() - t0)
            if not result.package.verdict.ok:
                raise SystemExit("the package did not verify")
            parts = ", ".join(f"{k} {v:.2f} s" for k, v in result.seconds.items())
            print(f"package run {i + 1}: {totals[-1]:.2f} s ({parts}); verified")
        stamp = stamp_audit(study.name, package_inputs(bundle, study.policy_attachment), signer)
        content = study.report(bundle, stamp)
        figures = Path(tmp) / "figures_base"
        for name, data in content.figures.items():
            (figures / name).parent.mkdir(parents=True, exist_ok=True)
            (figures / name).write_bytes(data)
        for i in range(args.repeat):
            t0 = time.perf_counter()
            doc = weasyprint.HTML(string=content.html, base_url=str(figures)).render()
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

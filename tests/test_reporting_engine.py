"""Reporting engine: deterministic PDF rendering, PAdES signing, verification, audit packages."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jinja2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from PIL import Image
from pyhanko.pdf_utils.reader import PdfFileReader
from system_tools import require_tool

from clinaudit.reporting.package import (
    PackageExistsError,
    inputs_digest,
    new_audit_id,
    stamp_audit,
    write_audit_package,
    write_report_package,
)
from clinaudit.reporting.pdf import (
    ReportRenderError,
    jinja_environment,
    render_pdf,
    render_template,
    report_environment,
)
from clinaudit.reporting.signing import (
    DEV_COMMON_NAME,
    SignerSpec,
    SigningConfigError,
    ensure_dev_signer,
    sign_pdf,
    signer_identity,
)
from clinaudit.reporting.verify import (
    embedded_files,
    format_verdict,
    main,
    pdfsig_report,
    verify_pdf,
)

EPOCH = 1_795_464_900  # 2026-11-23T20:15:00Z
HAS_PDFSIG = shutil.which("pdfsig") is not None or Path("/usr/bin/pdfsig").is_file()
TITLE = "clinaudit engine test report"


def _html(sections: int = 6) -> str:
    body = "".join(
        f"<h1>Section {i}</h1>"
        + "<p>Résumé: calibration ≤ 0.05, ü, 中 — sensitivity 0.91 [0.88, 0.94].</p>" * 30
        + ('<img src="fig.png" alt="figure">' if i == 0 else "")
        for i in range(sections)
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>t</title></head>'
        f"<body>{body}</body></html>"
    )


def _reader(data: bytes) -> PdfFileReader:
    return PdfFileReader(io.BytesIO(data), strict=False)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("base")
    Image.new("RGB", (40, 20), (200, 30, 30)).save(folder / "fig.png")
    return folder


@pytest.fixture(scope="module")
def dev_spec(tmp_path_factory: pytest.TempPathFactory) -> SignerSpec:
    return ensure_dev_signer(tmp_path_factory.mktemp("home") / "keys")


ATTACHMENTS = {"tables/metrics.csv": b"group,auroc\nA,0.91\n", "decisions.json": b'{"A": "GO"}'}
INPUTS = {"batch/site_a/b1": "a" * 64, "model": "b" * 64, "policy": "c" * 64}


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory, base: Path, dev_spec: SignerSpec):
    root = tmp_path_factory.mktemp("reports")
    audit_id = new_audit_id("demo_study", inputs_digest(INPUTS), datetime.fromtimestamp(EPOCH, UTC))
    return write_audit_package(
        root,
        study="demo_study",
        audit_id=audit_id,
        html=_html(),
        base_url=base,
        attachments=ATTACHMENTS,
        inputs=INPUTS,
        signer=dev_spec,
        title=TITLE,
        source_date_epoch=EPOCH,
        extra_files={"figures/fig.png": base / "fig.png"},
        metadata={"simulated": True},
    )


def _flip_title_byte(src: Path, dst: Path) -> None:
    data = bytearray(src.read_bytes())
    at = data.find(TITLE.encode())
    assert at > 0
    data[at] = ord("C")  # 'c' -> 'C' inside the signed byte range (the /Title string)
    dst.write_bytes(bytes(data))


# --- rendering --------------------------------------------------------------------------------


def test_render_is_deterministic_and_embeds_attachments(base: Path) -> None:
    kwargs = dict(base_url=base, attachments=ATTACHMENTS, title=TITLE, source_date_epoch=EPOCH)
    first = render_pdf(_html(), **kwargs)
    second = render_pdf(_html(), **kwargs)
    assert first == second
    reader = _reader(first)
    assert embedded_files(reader) == ATTACHMENTS
    info = reader.trailer["/Info"]
    assert str(info["/Title"]) == TITLE
    assert str(info["/CreationDate"]) == "D:20261123201500Z"
    assert render_pdf(_html(), **{**kwargs, "source_date_epoch": EPOCH + 1}) != first


def test_render_missing_figure_is_an_error(base: Path) -> None:
    html = '<html><body><img src="missing.png"></body></html>'
    with pytest.raises(ReportRenderError, match="missing.png"):
        render_pdf(html, base_url=base, attachments={}, title="t", source_date_epoch=EPOCH)
    with pytest.raises(ReportRenderError, match="attachment name"):
        render_pdf(html, base_url=base, attachments={"../x": b""}, title="t", source_date_epoch=0)


def test_jinja_environment_escapes_and_is_strict(tmp_path: Path) -> None:
    (tmp_path / "r.html.j2").write_text("<p>{{ view.name }}</p>", encoding="utf-8")
    env = jinja_environment(tmp_path)
    assert render_template(env, "r.html.j2", {"name": "<b>é</b>"}) == "<p>&lt;b&gt;é&lt;/b&gt;</p>"
    with pytest.raises(jinja2.UndefinedError):
        render_template(env, "r.html.j2", {})
    with pytest.raises(ReportRenderError, match="template_dir"):
        jinja_environment(tmp_path / "nope")
    studies = report_environment()
    assert studies.autoescape and studies.undefined is jinja2.StrictUndefined
    assert studies.get_template("sepsis_ews/report.html.j2").name == "sepsis_ews/report.html.j2"


# --- signer configuration ---------------------------------------------------------------------


def test_dev_signer_created_once_private(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    spec = ensure_dev_signer(key_dir)
    assert spec.is_development
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(spec.key_pem.parent.stat().st_mode) == 0o700
    for path in (spec.key_pem, spec.cert_pem):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key_bytes = spec.key_pem.read_bytes()
    again = ensure_dev_signer(key_dir)
    assert again == spec and again.key_pem.read_bytes() == key_bytes
    identity = signer_identity(spec)
    assert identity.common_name == DEV_COMMON_NAME and identity.is_development
    spec.key_pem.chmod(0o644)
    with pytest.raises(SigningConfigError, match="chmod 600"):
        ensure_dev_signer(key_dir)


def test_signer_spec_from_env() -> None:
    assert SignerSpec.from_env({}) is None
    spec = SignerSpec.from_env(
        {"CLINAUDIT_SIGNING_P12": "/k/s.p12", "CLINAUDIT_SIGNING_P12_PASSPHRASE": "x"}
    )
    assert spec == SignerSpec(
        pkcs12_path=Path("/k/s.p12"), passphrase_env="CLINAUDIT_SIGNING_P12_PASSPHRASE"
    )
    pem = SignerSpec.from_env({"CLINAUDIT_SIGNING_KEY": "k.pem", "CLINAUDIT_SIGNING_CERT": "c.pem"})
    assert pem.key_pem == Path("k.pem") and not pem.is_development
    with pytest.raises(SigningConfigError, match="only one of"):
        SignerSpec.from_env({"CLINAUDIT_SIGNING_KEY": "k.pem"})
    with pytest.raises(SigningConfigError, match="unset one"):
        SignerSpec.from_env({"CLINAUDIT_SIGNING_P12": "a", "CLINAUDIT_SIGNING_CERT": "c"})


_SIGNING_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _ca_signed_p12(folder: Path, passphrase: bytes) -> tuple[Path, Path]:
    """A CA certificate and a PKCS#12 with a signer certificate it issued."""
    now = datetime.now(UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Audit CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Audit Office")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(_SIGNING_USAGE, critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    p12 = pkcs12.serialize_key_and_certificates(
        b"signer", key, cert, [ca], serialization.BestAvailableEncryption(passphrase)
    )
    (folder / "signer.p12").write_bytes(p12)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return folder / "signer.p12", folder / "ca.pem"


def test_pkcs12_signer_trust_root_and_passphrase(
    tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passphrase = b"s3cret-Pass-phrase"
    p12, ca = _ca_signed_p12(tmp_path, passphrase)
    spec = SignerSpec(pkcs12_path=p12, passphrase_env="TEST_P12_PASS")
    with pytest.raises(SigningConfigError, match="TEST_P12_PASS is not set"):
        sign_pdf(b"", spec, reason="r", location="l", signer_name="n")
    monkeypatch.setenv("TEST_P12_PASS", "wrong")
    with pytest.raises(SigningConfigError, match="cannot load"):
        signer_identity(spec)
    monkeypatch.setenv("TEST_P12_PASS", passphrase.decode())
    assert not signer_identity(spec).is_development
    manifest = {"study": "s", "audit_id": "a", "inputs": {}, "outputs": {}, "signer": {}}
    unsigned = render_pdf(
        _html(1),
        base_url=base,
        attachments={"manifest.json": json.dumps(manifest).encode()},
        title=TITLE,
        source_date_epoch=EPOCH,
    )
    signed = sign_pdf(unsigned, spec, reason="audit", location="here", signer_name="Audit Office")
    assert passphrase not in signed
    path = tmp_path / "signed.pdf"
    path.write_bytes(signed)
    untrusted = {c.name: c for c in verify_pdf(path, use_pdfsig=False).checks}
    assert not untrusted["signature 'clinaudit-audit' signer"].ok
    assert "--trust-root" in untrusted["signature 'clinaudit-audit' signer"].detail
    trusted = verify_pdf(path, trust_roots=[ca], use_pdfsig=False)
    checks = {c.name: c for c in trusted.checks}
    assert checks["signature 'clinaudit-audit' signer"].ok
    assert checks["signature 'clinaudit-audit' intact"].ok
    assert not trusted.is_development and trusted.signer == "CN=Audit Office"
    # the manifest names a different signer than the certificate: that check fails
    assert not checks["manifest signer matches signature"].ok and not trusted.ok


# --- signed package -----------------------------------------------------------------------------


def test_package_layout_and_manifest(package) -> None:
    folder = package.dir
    assert folder.name == package.manifest["audit_id"] and folder.parent.name == "demo_study"
    assert package.manifest["audit_id"].startswith("20261123T201500Z-")
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    expected = ["decisions.json", "figures/fig.png", "manifest.json", "report.pdf"]
    assert names == sorted([*expected, "tables/metrics.csv"])
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest == package.manifest
    assert manifest["inputs"] == INPUTS and manifest["created"] == "2026-11-23T20:15:00Z"
    for name, data in ATTACHMENTS.items():
        assert manifest["outputs"][name] == hashlib.sha256(data).hexdigest()
    assert manifest["signer"] == {
        "subject": f"O=clinaudit,CN={DEV_COMMON_NAME}",
        "development": True,
    }
    assert manifest["metadata"] == {"simulated": True}
    assert manifest["code_version"]["clinaudit"]
    assert not (folder / "report.pdf").stat().st_mode & stat.S_IWUSR  # read-only


def test_signed_package_verifies(package) -> None:
    verdict = verify_pdf(package.pdf_path, package_dir=package.dir)
    assert verdict.ok, format_verdict(verdict)
    assert package.verdict.ok and verdict.is_development
    names = {c.name for c in verdict.checks}
    assert {
        "signature 'clinaudit-audit' intact",
        "signature 'clinaudit-audit' covers the whole file",
        "signature 'clinaudit-audit' signer",
        "manifest embedded",
        "embedded attachments match manifest",
        "package files match manifest",
    } <= names
    assert "development signature, self-signed" in format_verdict(verdict)
    reader = _reader(package.pdf_path.read_bytes())
    assert len(reader.embedded_signatures) == 1
    assert embedded_files(reader)["manifest.json"] == (package.dir / "manifest.json").read_bytes()


def test_pdfsig_parses_valid_and_digest_mismatch(package, tmp_path: Path) -> None:
    require_tool("pdfsig", "poppler-utils")
    valid, text = pdfsig_report(package.pdf_path)
    assert valid, text
    assert "Signature is Valid." in text
    tampered = tmp_path / "tampered.pdf"
    _flip_title_byte(package.pdf_path, tampered)
    valid, text = pdfsig_report(tampered)
    assert not valid and "Digest Mismatch" in text
    unsigned = tmp_path / "unsigned.pdf"
    unsigned.write_bytes(b"%PDF-1.7\n")
    assert not pdfsig_report(unsigned)[0]


def test_flipped_byte_fails_verification(package, tmp_path: Path) -> None:
    tampered = tmp_path / "report.pdf"
    _flip_title_byte(package.pdf_path, tampered)
    verdict = verify_pdf(tampered)
    checks = {c.name: c for c in verdict.checks}
    assert not verdict.ok
    assert not checks["signature 'clinaudit-audit' intact"].ok
    assert "DOES NOT match" in checks["signature 'clinaudit-audit' intact"].detail
    if HAS_PDFSIG:
        assert not checks["pdfsig cross-check"].ok
    assert main([str(tampered)]) == 1
    assert main([str(package.pdf_path), "--package-dir", str(package.dir)]) == 0


def test_modified_sidecar_fails_manifest_check(package, tmp_path: Path) -> None:
    copy = tmp_path / "pkg"
    shutil.copytree(package.dir, copy)
    target = copy / "tables" / "metrics.csv"
    target.chmod(0o644)
    target.write_bytes(b"group,auroc\nA,0.99\n")
    verdict = verify_pdf(copy / "report.pdf", package_dir=copy)
    check = {c.name: c for c in verdict.checks}["package files match manifest"]
    assert not verdict.ok and not check.ok and "tables/metrics.csv: sha256" in check.detail
    target.write_bytes(ATTACHMENTS["tables/metrics.csv"])
    (copy / "extra.txt").write_text("not in the manifest")
    check = {c.name: c for c in verify_pdf(copy / "report.pdf", package_dir=copy).checks}[
        "package files match manifest"
    ]
    assert not check.ok and "extra.txt: not listed" in check.detail


def test_embedded_attachment_not_matching_manifest_fails(
    base: Path, dev_spec: SignerSpec, tmp_path: Path
) -> None:
    identity = signer_identity(dev_spec)
    lying = {
        "study": "s",
        "audit_id": "a",
        "inputs": {},
        "outputs": {"tables/metrics.csv": hashlib.sha256(b"other").hexdigest()},
        "signer": {"subject": identity.subject, "development": True},
    }
    attachments = {**ATTACHMENTS, "manifest.json": json.dumps(lying).encode()}
    unsigned = render_pdf(
        _html(1), base_url=base, attachments=attachments, title=TITLE, source_date_epoch=EPOCH
    )
    path = tmp_path / "lying.pdf"
    path.write_bytes(sign_pdf(unsigned, dev_spec, reason="r", location="l", signer_name="x"))
    verdict = verify_pdf(path)
    checks = {c.name: c for c in verdict.checks}
    assert checks["signature 'clinaudit-audit' intact"].ok  # the signature itself is fine
    bad = checks["embedded attachments match manifest"]
    assert not verdict.ok and not bad.ok
    assert "tables/metrics.csv: sha256" in bad.detail
    assert "decisions.json: not listed" in bad.detail


def test_package_is_never_overwritten(package, base: Path, dev_spec: SignerSpec) -> None:
    before = package.pdf_path.read_bytes()
    with pytest.raises(PackageExistsError, match="never overwritten"):
        write_audit_package(
            package.dir.parent.parent,
            study="demo_study",
            audit_id=package.manifest["audit_id"],
            html=_html(1),
            base_url=base,
            attachments={},
            inputs=INPUTS,
            signer=dev_spec,
            title="again",
            source_date_epoch=EPOCH,
        )
    assert package.pdf_path.read_bytes() == before


def test_new_audit_id() -> None:
    now = datetime(2026, 11, 23, 21, 15, tzinfo=UTC) + timedelta(seconds=7)
    audit_id = new_audit_id("multisite_cxr", "d" * 64, now)
    assert (
        audit_id.startswith("20261123T211507Z-") and len(audit_id) == len("20261123T211507Z-") + 8
    )
    assert new_audit_id("other_study", "d" * 64, now) != audit_id
    with pytest.raises(ValueError, match="naive"):
        new_audit_id("multisite_cxr", "d" * 64, datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="study="):
        new_audit_id("../x", "d" * 64, now)


def test_stamp_audit_fixes_id_time_code_and_signer(dev_spec: SignerSpec) -> None:
    now = datetime.fromtimestamp(EPOCH, UTC) + timedelta(microseconds=250)
    stamp = stamp_audit("demo_study", INPUTS, dev_spec, now)
    assert stamp.now == datetime.fromtimestamp(EPOCH, UTC)  # whole seconds
    assert stamp.audit_id == new_audit_id("demo_study", inputs_digest(INPUTS), stamp.now)
    assert stamp.generated_at == "2026-11-23T20:15:00Z"
    assert stamp.code_version.startswith("clinaudit ")
    assert stamp.signer == f"O=clinaudit,CN={DEV_COMMON_NAME}" and stamp.development_signature
    with pytest.raises(ValueError, match="naive"):
        stamp_audit("demo_study", INPUTS, dev_spec, datetime(2026, 1, 1))


def test_report_package_writes_figures_from_memory(
    tmp_path: Path, base: Path, dev_spec: SignerSpec
) -> None:
    stamp = stamp_audit("demo_study", INPUTS, dev_spec, datetime.fromtimestamp(EPOCH, UTC))
    figure = (base / "fig.png").read_bytes()
    common = dict(
        study="demo_study",
        stamp=stamp,
        study_title="Demo report",
        html=_html(1).replace('src="fig.png"', 'src="figures/fig.png"'),
        attachments=ATTACHMENTS,
        inputs=INPUTS,
        signer=dev_spec,
        metadata={"simulated": True},
    )
    with pytest.raises(ReportRenderError, match="attachment name"):
        write_report_package(tmp_path, figures={"../escape.png": figure}, **common)
    assert not (tmp_path / "demo_study").exists()
    written = write_report_package(tmp_path, figures={"figures/fig.png": figure}, **common)
    assert written.dir == tmp_path / "demo_study" / stamp.audit_id and written.verdict.ok
    assert (written.dir / "figures" / "fig.png").read_bytes() == figure
    assert written.manifest["title"] == f"Demo report ({stamp.audit_id})"
    assert written.manifest["created"] == "2026-11-23T20:15:00Z"
    assert written.manifest["outputs"]["figures/fig.png"] == hashlib.sha256(figure).hexdigest()
    assert embedded_files(_reader(written.pdf_path.read_bytes()))["figures/fig.png"] == figure


def test_visible_signature_on_last_page_with_embedded_font(package) -> None:
    reader = _reader(package.pdf_path.read_bytes())
    page_ref, _ = reader.find_page_for_modification(-1)
    annots = [a.get_object() for a in page_ref.get_object().get("/Annots", [])]
    widgets = [a for a in annots if a.get("/FT") == "/Sig"]
    assert [str(w["/T"]) for w in widgets] == ["clinaudit-audit"]
    x1, y1, x2, y2 = (float(v) for v in widgets[0]["/Rect"])
    assert (round(x2 - x1), round(y2 - y1)) == (200, 60)
    appearance = widgets[0]["/AP"]["/N"]
    assert b"DEVELOPMENT SIGNATURE" in appearance.data  # /ActualText of the stamp text
    fonts = list(appearance["/Resources"]["/Font"].values())
    descendant = fonts[0].get_object()["/DescendantFonts"][0].get_object()
    assert "/FontFile2" in descendant["/FontDescriptor"]  # the TrueType program is embedded
    widths = [w for item in descendant["/W"] if isinstance(item, list) for w in item]
    assert widths and max(widths) <= 1100  # glyph widths in 1/1000 em (not font units)
    # no other signature widget on earlier pages
    first_ref, _ = reader.find_page_for_modification(0)
    assert all(
        a.get_object().get("/FT") != "/Sig" for a in first_ref.get_object().get("/Annots", [])
    )


def test_key_material_never_in_pdf(package, dev_spec: SignerSpec) -> None:
    pdf = package.pdf_path.read_bytes()
    key_pem = dev_spec.key_pem.read_bytes()
    key = serialization.load_pem_private_key(key_pem, password=None)
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    d = key.private_numbers().d
    secret = d.to_bytes((d.bit_length() + 7) // 8, "big")
    body = b"".join(key_pem.splitlines()[1:-1])
    for needle in (der, secret, body[:64], key_pem.splitlines()[1]):
        assert needle not in pdf
    for data in embedded_files(_reader(pdf)).values():
        assert secret not in data and b"PRIVATE KEY" not in data

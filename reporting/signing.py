"""PAdES signing of report PDFs with pyHanko: signer configuration, the development signer, stamp.

Key material comes from a PKCS#12 file (passphrase read from an environment variable whose *name*
is configured) or from PEM key + certificate files. Without configuration, a development signer is
created once under the key folder: an RSA key and a self-signed certificate whose common name says
"NOT FOR PRODUCTION"; everything signed with it is marked as a development signature. Keys and
passphrases are never logged, never put in an error message and never written into a PDF.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from fontTools import subset, ttLib
from fontTools.ttLib.scaleUpem import scale_upem
from pyhanko.keys import load_certs_from_pemder_data, load_private_key_from_pemder_data
from pyhanko.pdf_utils.font.api import FontEngineFactory
from pyhanko.pdf_utils.font.opentype import GlyphAccumulator
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.layout import AxisAlignment, Margins, SimpleBoxLayoutRule
from pyhanko.pdf_utils.text import TextBoxStyle
from pyhanko.pdf_utils.writer import BasePdfFileWriter
from pyhanko.sign import fields, signers
from pyhanko.stamp import TextStampStyle
from pyhanko_certvalidator.registry import SimpleCertificateStore

#: Common name of the development certificate; verification recognises it by this name.
DEV_COMMON_NAME = "clinaudit development signer (NOT FOR PRODUCTION)"
#: Environment variables read by :meth:`SignerSpec.from_env` (when called, never at import).
P12_ENV = "CLINAUDIT_SIGNING_P12"
P12_PASSPHRASE_ENV_ENV = "CLINAUDIT_SIGNING_P12_PASSPHRASE_ENV"
P12_PASSPHRASE_DEFAULT_ENV = "CLINAUDIT_SIGNING_P12_PASSPHRASE"
KEY_ENV = "CLINAUDIT_SIGNING_KEY"
CERT_ENV = "CLINAUDIT_SIGNING_CERT"
KEY_PASSPHRASE_ENV_ENV = "CLINAUDIT_SIGNING_KEY_PASSPHRASE_ENV"
CHAIN_ENV = "CLINAUDIT_SIGNING_CHAIN"
#: Visible signature box (width, height) in PDF points, and its distance from the page's
#: right and bottom edges (the bottom offset keeps it above a footer in a 2 cm page margin).
SIGNATURE_BOX_PT = (200, 60)
SIGNATURE_MARGIN_RIGHT_PT = 42
SIGNATURE_MARGIN_BOTTOM_PT = 64
_STAMP_FONT_SIZE = 7
_DEV_KEY_BITS = 3072
_DEV_VALIDITY = timedelta(days=3650)


class SigningConfigError(ValueError):
    """The signer is misconfigured (missing file, unset passphrase variable, unreadable key)."""


@dataclass(frozen=True)
class SignerSpec:
    """Where the signing key and certificate come from. Holds paths and variable names only.

    Either ``pkcs12_path`` (passphrase in the environment variable named ``passphrase_env``, if
    any) or ``key_pem`` + ``cert_pem`` (key passphrase in ``passphrase_env``, if any).
    ``chain_pem`` lists intermediate certificates to embed. ``is_development`` marks the local
    development signer (:func:`ensure_dev_signer`).
    """

    pkcs12_path: Path | None = None
    key_pem: Path | None = None
    cert_pem: Path | None = None
    passphrase_env: str | None = None
    chain_pem: tuple[Path, ...] = ()
    is_development: bool = False

    def __post_init__(self) -> None:
        pem = (self.key_pem is not None, self.cert_pem is not None)
        if self.pkcs12_path is not None and any(pem):
            raise SigningConfigError(
                "SignerSpec: pkcs12_path and key_pem/cert_pem are both set; configure one source "
                "of key material (a PKCS#12 file, or a PEM key and certificate)"
            )
        if self.pkcs12_path is None and pem != (True, True):
            raise SigningConfigError(
                f"SignerSpec: key_pem={self.key_pem!s} cert_pem={self.cert_pem!s}; expected "
                "pkcs12_path, or both key_pem and cert_pem"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SignerSpec | None:
        """The signer configured in the environment, or ``None`` when none is configured.

        ``CLINAUDIT_SIGNING_P12`` (PKCS#12 path; passphrase in ``CLINAUDIT_SIGNING_P12_PASSPHRASE``
        or in the variable named by ``CLINAUDIT_SIGNING_P12_PASSPHRASE_ENV``), or
        ``CLINAUDIT_SIGNING_KEY`` + ``CLINAUDIT_SIGNING_CERT`` (PEM; key passphrase in the variable
        named by ``CLINAUDIT_SIGNING_KEY_PASSPHRASE_ENV``). ``CLINAUDIT_SIGNING_CHAIN``: extra
        certificate files separated by ``os.pathsep``.
        """
        env = os.environ if environ is None else environ
        chain = tuple(Path(p) for p in env.get(CHAIN_ENV, "").split(os.pathsep) if p)
        if env.get(P12_ENV):
            if env.get(KEY_ENV) or env.get(CERT_ENV):
                raise SigningConfigError(
                    f"{P12_ENV} and {KEY_ENV}/{CERT_ENV} are all set; unset one of the two"
                )
            name = env.get(P12_PASSPHRASE_ENV_ENV) or (
                P12_PASSPHRASE_DEFAULT_ENV if P12_PASSPHRASE_DEFAULT_ENV in env else None
            )
            return cls(pkcs12_path=Path(env[P12_ENV]), passphrase_env=name, chain_pem=chain)
        if env.get(KEY_ENV) or env.get(CERT_ENV):
            if not (env.get(KEY_ENV) and env.get(CERT_ENV)):
                raise SigningConfigError(
                    f"only one of {KEY_ENV} and {CERT_ENV} is set; set both (PEM private key and "
                    "its certificate) or neither"
                )
            return cls(
                key_pem=Path(env[KEY_ENV]),
                cert_pem=Path(env[CERT_ENV]),
                passphrase_env=env.get(KEY_PASSPHRASE_ENV_ENV) or None,
                chain_pem=chain,
            )
        return None


@dataclass(frozen=True)
class SignerIdentity:
    """Public facts about a signer's certificate (for the report text and the manifest)."""

    common_name: str
    subject: str
    sha256_fingerprint: str
    is_development: bool


def is_dev_certificate(cert: x509.Certificate) -> bool:
    """True for the self-signed development certificate made by :func:`ensure_dev_signer`."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return bool(cns) and cns[0].value == DEV_COMMON_NAME and cert.issuer == cert.subject


def certificate_identity(cert: x509.Certificate, *, is_development: bool) -> SignerIdentity:
    """:class:`SignerIdentity` of a certificate."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return SignerIdentity(
        common_name=str(cns[0].value) if cns else "",
        subject=cert.subject.rfc4514_string(),
        sha256_fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        is_development=is_development or is_dev_certificate(cert),
    )


def _dev_paths(key_dir: Path) -> tuple[Path, Path, Path]:
    folder = Path(key_dir) / "dev_signer"
    return folder, folder / "key.pem", folder / "cert.pem"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _dev_certificate(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, DEV_COMMON_NAME),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "clinaudit"),
        ]
    )
    now = datetime.now(UTC).replace(microsecond=0)
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=True,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + _DEV_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def ensure_dev_signer(key_dir: Path) -> SignerSpec:
    """The development signer under ``key_dir/dev_signer/``, created once.

    An RSA-3072 key and a self-signed certificate (CN "clinaudit development signer (NOT FOR
    PRODUCTION)", valid 10 years), files 0600 in a 0700 folder. Both are written to a private
    temporary folder that is renamed into place, so concurrent callers end up sharing one pair.
    An existing pair is reused; a key readable by group or others is refused.
    """
    folder, key_path, cert_path = _dev_paths(key_dir)
    if not folder.exists():
        Path(key_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = Path(tempfile.mkdtemp(prefix=".dev_signer.", dir=key_dir))  # mode 0700
        key = rsa.generate_private_key(public_exponent=65537, key_size=_DEV_KEY_BITS)
        _write_private(
            staging / "key.pem",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        cert_pem = _dev_certificate(key).public_bytes(serialization.Encoding.PEM)
        _write_private(staging / "cert.pem", cert_pem)
        try:
            staging.rename(folder)
        except OSError:  # another process created it first: use theirs
            shutil.rmtree(staging)
    for path in (key_path, cert_path):
        if not path.is_file():
            raise SigningConfigError(
                f"{path}: development signer file missing (folder {folder} is incomplete); "
                "delete the folder to create a new development signer"
            )
    if stat.S_IMODE(key_path.stat().st_mode) & 0o077:
        raise SigningConfigError(
            f"{key_path}: development signing key is readable by group/others; run "
            f"`chmod 600 {key_path}`"
        )
    return SignerSpec(key_pem=key_path, cert_pem=cert_path, is_development=True)


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SigningConfigError(
            f"{what} {str(path)!r} cannot be read ({exc.strerror}); check the signer "
            f"configuration ({P12_ENV} or {KEY_ENV}/{CERT_ENV})"
        ) from None


def _passphrase(spec: SignerSpec) -> bytes | None:
    if spec.passphrase_env is None:
        return None
    value = os.environ.get(spec.passphrase_env)
    if value is None:
        raise SigningConfigError(
            f"the signing passphrase variable {spec.passphrase_env} is not set; export it "
            "(the value is never logged)"
        )
    return value.encode("utf-8")


def _chain(spec: SignerSpec) -> list[asn1_x509.Certificate]:
    return [c for p in spec.chain_pem for c in load_certs_from_pemder_data(_read(p, "chain"))]


def _load_certificate(spec: SignerSpec) -> asn1_x509.Certificate:
    if spec.cert_pem is not None:
        certs = list(load_certs_from_pemder_data(_read(spec.cert_pem, "certificate")))
        if len(certs) != 1:
            raise SigningConfigError(
                f"{spec.cert_pem}: holds {len(certs)} certificates, expected exactly 1 (the "
                f"signer's); put intermediates in {CHAIN_ENV}"
            )
        return certs[0]
    return load_signer(spec).signing_cert


def load_signer(spec: SignerSpec) -> signers.SimpleSigner:
    """A pyHanko signer holding the key and certificate described by ``spec``."""
    chain = _chain(spec)
    if spec.pkcs12_path is not None:
        data = _read(spec.pkcs12_path, "PKCS#12 file")
        passphrase = _passphrase(spec)
        try:
            return signers.SimpleSigner.load_pkcs12_data(
                data, other_certs=chain, passphrase=passphrase
            )
        except ValueError:
            raise SigningConfigError(
                f"{spec.pkcs12_path}: cannot load the key and certificate from this PKCS#12 file; "
                f"check the file and the passphrase variable ({spec.passphrase_env or 'none'})"
            ) from None
    assert spec.key_pem is not None  # guaranteed by SignerSpec.__post_init__
    cert = _load_certificate(spec)
    key_data, passphrase = _read(spec.key_pem, "private key"), _passphrase(spec)
    try:
        key: asn1_keys.PrivateKeyInfo = load_private_key_from_pemder_data(
            key_data, passphrase=passphrase
        )
    except (ValueError, TypeError):
        raise SigningConfigError(
            f"{spec.key_pem}: cannot load the private key (wrong format or passphrase; "
            f"passphrase variable: {spec.passphrase_env or 'none'})"
        ) from None
    return signers.SimpleSigner(
        signing_cert=cert,
        signing_key=key,
        cert_registry=SimpleCertificateStore.from_certs(chain),
    )


def signer_identity(spec: SignerSpec) -> SignerIdentity:
    """Common name, subject, fingerprint and development flag of the signer's certificate."""
    cert = x509.load_der_x509_certificate(_load_certificate(spec).dump())
    return certificate_identity(cert, is_development=spec.is_development)


def signer_subject(spec: SignerSpec) -> str:
    """The signer certificate's subject (RFC 4514), as the report and the manifest show it."""
    return signer_identity(spec).subject


#: System TrueType fonts tried, in order, for the signature stamp.
STAMP_FONT_CANDIDATES = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf"),
    Path("/usr/share/fonts/TTF/DejaVuSans.ttf"),
    Path("/usr/share/fonts/dejavu/DejaVuSans.ttf"),
)


def find_stamp_font(font_path: Path | None = None) -> Path:
    """``font_path`` if given (must exist), else the first installed candidate font."""
    if font_path is not None:
        if not Path(font_path).is_file():
            raise SigningConfigError(
                f"font_path={str(font_path)!r} does not exist; pass a TrueType (.ttf) file"
            )
        return Path(font_path)
    for candidate in STAMP_FONT_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise SigningConfigError(
        "no TrueType font for the signature stamp; looked for "
        f"{', '.join(str(p) for p in STAMP_FONT_CANDIDATES)}; install fonts-dejavu-core "
        "(apt) or pass font_path= a .ttf file"
    )


@functools.lru_cache(maxsize=8)
def prepare_stamp_font(path: Path, text: str) -> bytes:
    """The font subset to ``text`` + printable ASCII, rescaled to 1000 units per em.

    Layout tables (ligatures, kerning) are dropped: the stamp is a few lines of plain text.

    pyHanko 0.38 writes glyph widths (/W) and kerning in the font's own units, which PDF readers
    take as thousandths of an em; fonts with another unitsPerEm (DejaVu and Liberation: 2048)
    then print with wide gaps. Rescaling the (small) subset to 1000 units avoids that.
    """
    options = subset.Options()
    options.notdef_outline = True
    options.hinting = False
    options.drop_tables += ["FFTM", "GSUB", "GPOS", "GDEF", "kern"]  # no shaping tables needed
    font = ttLib.TTFont(str(path))
    subsetter = subset.Subsetter(options)
    subsetter.populate(text="".join(chr(c) for c in range(32, 127)) + text)
    subsetter.subset(font)
    if font["head"].unitsPerEm != 1000:
        scale_upem(font, 1000)
    buf = io.BytesIO()
    font.save(buf)
    return buf.getvalue()


class EmbeddedFontFactory(FontEngineFactory):
    """pyHanko font engine factory over in-memory TrueType bytes (embedded as a subset).

    The engine's size equals the text box's size: pyHanko computes line advances with the
    engine's size and returns with the box's, so the two must agree.
    """

    def __init__(self, font: bytes, font_size: int) -> None:
        self._font = font
        self._size = font_size

    def create_font_engine(self, writer: BasePdfFileWriter, obj_stream=None) -> GlyphAccumulator:
        return GlyphAccumulator(writer, io.BytesIO(self._font), self._size, obj_stream=obj_stream)


def _signature_box(writer: IncrementalPdfFileWriter) -> tuple[int, int, int, int]:
    page_ref, _ = writer.find_page_for_modification(-1)
    node = page_ref.get_object()
    while "/MediaBox" not in node:
        if "/Parent" not in node:
            raise ValueError("the last page has no /MediaBox (not even inherited); bad PDF input")
        node = node["/Parent"].get_object()
    llx, lly, urx, _ury = (float(v) for v in node["/MediaBox"])
    width, height = SIGNATURE_BOX_PT
    x2 = int(urx - SIGNATURE_MARGIN_RIGHT_PT)
    y1 = int(lly + SIGNATURE_MARGIN_BOTTOM_PT)
    if x2 - width < llx:
        raise ValueError(f"the last page is {urx - llx:.0f} pt wide, too narrow for the stamp")
    return (x2 - width, y1, x2, y1 + height)


def _stamp_style(texts: list[str], font_path: Path | None) -> TextStampStyle:
    font = prepare_stamp_font(find_stamp_font(font_path), "".join(texts))
    return TextStampStyle(
        stamp_text="Digitally signed (PAdES)\nSigner: %(signer)s\nTime: %(ts)s\n%(kind)s",
        timestamp_format="%Y-%m-%d %H:%M:%S UTC%z",
        border_width=1,
        text_box_style=TextBoxStyle(
            font=EmbeddedFontFactory(font, _STAMP_FONT_SIZE),
            font_size=_STAMP_FONT_SIZE,
            leading=_STAMP_FONT_SIZE + 2,
        ),
        inner_content_layout=SimpleBoxLayoutRule(
            x_align=AxisAlignment.ALIGN_MIN,
            y_align=AxisAlignment.ALIGN_MID,
            margins=Margins.uniform(6),
        ),
    )


def sign_pdf(
    pdf: bytes,
    spec: SignerSpec,
    *,
    field_name: str = "clinaudit-audit",
    reason: str,
    location: str,
    signer_name: str,
    font_path: Path | None = None,
) -> bytes:
    """Sign ``pdf`` (PAdES baseline B, SHA-256) with a visible stamp on the last page.

    Parameters
    ----------
    pdf : bytes
        The unsigned PDF. The signature is an incremental update covering the whole file.
    spec : SignerSpec
        Key material source.
    field_name, reason, location, signer_name : str
        Signature field name and the signature dictionary's /Reason, /Location, /Name.
    font_path : Path, optional
        TrueType font for the stamp (embedded); default: DejaVu Sans or Liberation Sans.

    Returns
    -------
    bytes
        The signed PDF. The stamp says "DEVELOPMENT SIGNATURE" for a development signer.
    """
    signer = load_signer(spec)
    identity = certificate_identity(
        x509.load_der_x509_certificate(signer.signing_cert.dump()),
        is_development=spec.is_development,
    )
    kind = (
        "DEVELOPMENT SIGNATURE - self-signed, not for production"
        if identity.is_development
        else f"Certificate: {identity.common_name}"
    )
    style = _stamp_style([signer_name, kind], font_path)
    writer = IncrementalPdfFileWriter(io.BytesIO(pdf), strict=False)
    meta = signers.PdfSignatureMetadata(
        field_name=field_name,
        md_algorithm="sha256",
        subfilter=fields.SigSeedSubFilter.PADES,
        reason=reason,
        location=location,
        name=signer_name,
    )
    field = fields.SigFieldSpec(field_name, on_page=-1, box=_signature_box(writer))
    pdf_signer = signers.PdfSigner(meta, signer, stamp_style=style, new_field_spec=field)
    out = pdf_signer.sign_pdf(writer, appearance_text_params={"kind": kind})
    return out.getvalue()

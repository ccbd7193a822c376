"""Every Dagster resource of the project and its IO manager, in one module.

Defaults live here and nowhere else. Paths come from the resource config, else ``CLINAUDIT_HOME``
(default ``./var``). Environment variables are read when a run uses a resource, never at import:
a study's model and policy resources look at ``CLINAUDIT_<STUDY>_MODEL`` / ``_SCORES`` /
``_THRESHOLD`` / ``_THRESHOLDS`` / ``_POLICY`` (``<STUDY>`` = the study name in capitals) for
what their config leaves unset, so runs started by a sensor, the automation or the UI audit
what ``clinaudit audit`` was told to.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from clinaudit.audit.policy_base import PolicyBase
from clinaudit.audit.records import (
    ModelRef,
    Record,
    TableSet,
    facts_json,
    record_from_json,
    record_to_json,
)
from clinaudit.reporting.signing import SignerSpec, ensure_dev_signer
from clinaudit.studies import get_study
from clinaudit.studies.base import ModelSpec, RunDirs

from .storage import (
    STORE_URL_ENV,
    StorePath,
    check_key_part,
    describe,
    fetch_model,
    is_local,
    publish_model,
    store_root,
)

#: Environment variables the project reads, when a run uses them (never at import).
HOME_ENV = "CLINAUDIT_HOME"
PSEUDONYM_KEY_ENV = "CLINAUDIT_PSEUDONYM_KEY"


#: Variables of earlier releases -> the variable that replaces them. A run refuses to start
#: while one is set: silently ignoring it would audit another model or policy than intended.
LEGACY_ENV: dict[str, str] = {
    "CLINAUDIT_MODEL_PACKAGE": "CLINAUDIT_MULTISITE_CXR_MODEL",
    "CLINAUDIT_VENDOR_SCORES": "CLINAUDIT_MULTISITE_CXR_SCORES",
    "CLINAUDIT_POLICY": "CLINAUDIT_MULTISITE_CXR_POLICY",
    "CLINAUDIT_SEPSIS_MODEL": "CLINAUDIT_SEPSIS_EWS_MODEL",
    "CLINAUDIT_SEPSIS_POLICY": "CLINAUDIT_SEPSIS_EWS_POLICY",
}


def check_legacy_env() -> None:
    """Refuse to run while a renamed environment variable is still set.

    Raises
    ------
    ValueError
        Naming each old variable and its replacement.
    """
    found = {old: new for old, new in LEGACY_ENV.items() if os.environ.get(old)}
    if found:
        renames = ", ".join(f"{old} -> {new}" for old, new in found.items())
        raise ValueError(
            f"environment variables {sorted(found)} are no longer read (variables are now named "
            f"after the study); rename them: {renames}"
        )


def study_env(study: str, what: str) -> str:
    """``CLINAUDIT_<STUDY>_<WHAT>``: e.g. ``study_env("sepsis_ews", "policy")``."""
    return f"CLINAUDIT_{study.upper()}_{what.upper()}"


def ensure_secret_file(path: Path, nbytes: int = 32) -> bytes:
    """Return the secret stored in ``path``, creating it once with mode 0600 if absent.

    The file is created with ``O_CREAT | O_EXCL`` so two processes never write different keys, and
    its parent directory is created with mode 0700. The secret is never logged.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        data = path.read_bytes()
        if len(data) < 16:
            raise ValueError(
                f"{path}: secret key file holds {len(data)} bytes, expected at least 16; delete it "
                "only if no pseudonymised data must stay linkable, or restore it from backup"
            ) from None
        return data
    with os.fdopen(fd, "wb") as fh:
        data = secrets.token_bytes(nbytes)
        fh.write(data)
    return data


class ClinauditHome(dg.ConfigurableResource):
    """Run-time directory tree (all gitignored; every path configurable).

    ``root`` holds ``landing/`` (immutable input), ``quarantine/``, ``artifacts/``, ``reports/``
    and ``keys/`` unless a directory is overridden.
    """

    root: str | None = None
    landing_dir: str | None = None
    artifacts_dir: str | None = None
    quarantine_dir: str | None = None
    reports_dir: str | None = None
    keys_dir: str | None = None
    #: Where asset values are stored: a folder, ``file://`` or ``s3://bucket/prefix`` (see
    #: ``assets.storage``). Unset: ``$CLINAUDIT_STORE_URL`` (read when used), else ``artifacts``.
    store_url: str | None = None

    @property
    def root_dir(self) -> Path:
        """``root`` if configured, else ``$CLINAUDIT_HOME`` (read when used), else ``./var``."""
        return Path(self.root or os.environ.get(HOME_ENV) or "var")

    def _dir(self, override: str | None, name: str) -> Path:
        return Path(override) if override else self.root_dir / name

    @property
    def landing(self) -> Path:
        return self._dir(self.landing_dir, "landing")

    @property
    def artifacts(self) -> Path:
        return self._dir(self.artifacts_dir, "artifacts")

    @property
    def quarantine(self) -> Path:
        return self._dir(self.quarantine_dir, "quarantine")

    @property
    def reports(self) -> Path:
        return self._dir(self.reports_dir, "reports")

    @property
    def key_dir(self) -> Path:
        # Not named ``keys``: pydantic/dagster call ``dict(resource)``, which uses ``.keys()``.
        return self._dir(self.keys_dir, "keys")

    @property
    def _configured_store(self) -> StorePath | None:
        """The store ``store_url`` / ``$CLINAUDIT_STORE_URL`` names (read now), or None."""
        url = self.store_url or os.environ.get(STORE_URL_ENV)
        return store_root(url) if url else None

    @property
    def store(self) -> StorePath:
        """The store of asset values (``tables/<asset key>/...``): a local ``Path`` by default, an
        S3 ``UPath`` in the ``scale`` profile."""
        configured = self._configured_store
        return self.artifacts if configured is None else configured

    @property
    def package_store(self) -> StorePath | None:
        """Where signed packages are published besides ``reports/`` (``<store>/packages``), or
        None when no store is configured (the ``local`` profile keeps them in ``reports/`` only).
        """
        configured = self._configured_store
        return None if configured is None else configured / "packages"

    def _model_location(self, model: ModelRef) -> StorePath | None:
        configured = self._configured_store
        if configured is None or model.mode == "scores":
            return None
        study = check_key_part(model.study, "study")
        return configured / "models" / study / check_key_part(model.identity, "identity")

    def publish_model(self, model: ModelRef) -> str | None:
        """Publish the package folder of ``model`` to ``<store>/models/<study>/<identity>`` (the
        ``scale`` profile), once; returns where, or None without a store, for vendor scores or
        a source that is not a folder."""
        dest = self._model_location(model)
        if dest is None or not Path(model.source).is_dir():
            return None
        publish_model(Path(model.source), dest)
        return describe(dest)

    def local_model(self, model: ModelRef) -> ModelRef:
        """``model`` with a package folder on this machine: as it is when its source folder is
        here (or no store is configured: the loader then names the missing folder), else the
        package published by the model stage, fetched once into
        ``<artifacts>/models/cache/<study>/<identity>`` and checked file by file."""
        src = self._model_location(model)
        if src is None or Path(model.source).is_dir():
            return model
        cache = self.artifacts / "models" / "cache" / model.study / model.identity
        return dataclasses.replace(model, source=str(fetch_model(src, cache)))

    def dirs(self) -> RunDirs:
        """The directories as plain paths, for the study functions (which import no Dagster)."""
        return RunDirs(self.landing, self.artifacts, self.quarantine, self.reports, self.key_dir)

    def pseudonym_secret(self) -> bytes:
        """The keyed-hash secret for patient pseudonyms.

        From the ``CLINAUDIT_PSEUDONYM_KEY`` environment variable (hex or text, read when used;
        never resource config, which the UI displays), else a development key created once under
        ``keys/pseudonym.key`` (0600). Keep it: a new key makes new pseudonyms.
        """
        configured = os.environ.get(PSEUDONYM_KEY_ENV)
        if configured:
            try:
                return bytes.fromhex(configured)
            except ValueError:
                return configured.encode("utf-8")
        return ensure_secret_file(self.key_dir / "pseudonym.key")

    def pseudonym_key_source(self) -> str:
        """Where the pseudonymisation key comes from (for metadata; never the key itself)."""
        if os.environ.get(PSEUDONYM_KEY_ENV):
            return PSEUDONYM_KEY_ENV
        return f"development key file {self.key_dir / 'pseudonym.key'} (set {PSEUDONYM_KEY_ENV})"


class StudyModel(dg.ConfigurableResource):
    """What a study audits and how inference runs (resource ``<study>_model``).

    Set at most one of ``package_dir`` (a vendor model package, verified on load) and ``scores``
    (vendor scores: a folder of ``<partition>.csv`` or one CSV); with neither, the study's
    embedded model. ``thresholds``: with scores, the vendor's thresholds file (JSON, one
    threshold per output). Unset fields fall back to ``CLINAUDIT_<STUDY>_MODEL`` / ``_SCORES`` /
    ``_THRESHOLD`` / ``_THRESHOLDS`` when the resource is used. ``training``: settings of the
    embedded model (e.g. ``scale``, the demo scale, and for an image model ``arch``, ``input_size``,
    ``epochs``); each study refuses settings it does not know; left empty, ``_TRAINING`` (a JSON
    object) when set. Defaults are the study's.
    """

    study: str
    package_dir: str | None = None
    scores: str | None = None
    threshold: float | None = None
    thresholds: str | None = None
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None
    num_workers: int | None = None
    seed: int = 0
    training: dict[str, Any] = {}

    def spec(self) -> ModelSpec:
        """The effective settings (environment read now)."""
        check_legacy_env()
        env = os.environ
        threshold = self.threshold
        if threshold is None and env.get(study_env(self.study, "threshold")):
            raw = env[study_env(self.study, "threshold")]
            try:
                threshold = float(raw)
            except ValueError:
                raise ValueError(
                    f"{study_env(self.study, 'threshold')}={raw!r} is not a number; set it to "
                    "the vendor's operating threshold (e.g. 0.35) or unset it"
                ) from None
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise ValueError(
                f"{self.study} model threshold {threshold!r} is outside (0, 1): the operating "
                "threshold is a probability (alert at score >= it); a percentage must be divided "
                "by 100"
            )
        thresholds = self.thresholds or env.get(study_env(self.study, "thresholds")) or None
        package = self.package_dir or env.get(study_env(self.study, "model")) or None
        scores = self.scores or env.get(study_env(self.study, "scores")) or None
        if self.package_dir or self.scores:  # explicit config wins over the environment
            package, scores = self.package_dir, self.scores
        return ModelSpec(
            package_dir=package,
            scores=scores,
            threshold=threshold,
            thresholds=thresholds,
            device=self.device,
            precision=self.precision,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            seed=self.seed,
            training=dict(self.training) if self.training else self._training_from_env(),
        )

    def _training_from_env(self) -> dict[str, Any]:
        """``CLINAUDIT_<STUDY>_TRAINING``: the embedded model's settings as a JSON object (e.g.
        ``{"scale": "tiny"}``), so that a daemon, its code server and run workers train and
        fingerprint the model the way the run that first built it did."""
        name = study_env(self.study, "training")
        raw = os.environ.get(name)
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{name}={raw!r} is not JSON ({err.msg}); set it to an object such as "
                '\'{"scale": "tiny"}\' or unset it'
            ) from None
        if not isinstance(value, dict):
            raise ValueError(
                f'{name}={raw!r} is not a JSON object; set it to e.g. \'{{"scale": "tiny"}}\''
            )
        return value


class StudyPolicy(dg.ConfigurableResource):
    """A study's policy file (resource ``<study>_policy``): ``path``, else
    ``CLINAUDIT_<STUDY>_POLICY``, else the policy shipped with the study."""

    study: str
    path: str | None = None

    def resolved_path(self) -> Path:
        check_legacy_env()
        configured = self.path or os.environ.get(study_env(self.study, "policy")) or None
        return Path(configured) if configured else get_study(self.study).shipped_policy()

    def load(self) -> PolicyBase:
        """The parsed, strictly validated policy."""
        return get_study(self.study).load_policy(self.resolved_path())


class ReportSigner(dg.ConfigurableResource):
    """Who signs the audit packages.

    Set ``pkcs12_path`` (e.g. ``dg.EnvVar("CLINAUDIT_SIGNING_P12")``, passphrase in the variable
    named by ``passphrase_env``) or ``key_pem`` + ``cert_pem``; otherwise the
    ``CLINAUDIT_SIGNING_*`` environment variables; otherwise a local development key and
    self-signed certificate are created once under ``<home>/keys`` (0600) and every report says
    it carries a development signature. Keys never enter the repository, logs or metadata.
    """

    pkcs12_path: str | None = None
    key_pem: str | None = None
    cert_pem: str | None = None
    passphrase_env: str | None = None

    def spec(self, key_dir: Path) -> SignerSpec:
        if self.pkcs12_path or self.key_pem or self.cert_pem:
            return SignerSpec(
                pkcs12_path=Path(self.pkcs12_path) if self.pkcs12_path else None,
                key_pem=Path(self.key_pem) if self.key_pem else None,
                cert_pem=Path(self.cert_pem) if self.cert_pem else None,
                passphrase_env=self.passphrase_env,
            )
        return SignerSpec.from_env() or ensure_dev_signer(key_dir)


class LandingWatch(dg.ConfigurableResource):
    """Landing sensor settings: ``quarantine_after_s``, how long a batch whose manifest exists may
    stay unreadable or unverified (upload still running) before it is quarantined."""

    quarantine_after_s: float = 1800.0


# --------------------------------------------------------------------------- IO manager
def stored_path(home: ClinauditHome, key: dg.AssetKey, partition: str | None) -> StorePath:
    """Where :class:`StudyIOManager` keeps an asset's value, without the suffix:
    ``<store>/tables/<key path>/<partition or __all__>`` (a partition key that could leave its
    prefix is refused with :class:`~clinaudit.assets.storage.StoreError`)."""
    part = "__all__" if partition is None else check_key_part(partition)
    return home.store.joinpath("tables", *key.path) / part


def _write_table_set(value: TableSet, target: StorePath) -> None:
    if not is_local(target):
        # Object storage has no rename: drop the old value (its facts.json first, so no reader
        # takes a half-replaced folder for whole), then write facts.json last.
        if target.exists():
            (target / "facts.json").unlink(missing_ok=True)
            target.fs.rm(target.path, recursive=True)
        for name, frame in value.tables.items():
            with (target / f"{name}.parquet").open("wb") as fh:
                frame.to_parquet(fh, index=False)
        for name, data in value.files.items():
            (target / "files" / name).write_bytes(data)
        (target / "facts.json").write_text(facts_json(value.facts), encoding="utf-8")
        return
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    (tmp / "files").mkdir(parents=True)
    for name, frame in value.tables.items():
        frame.to_parquet(tmp / f"{name}.parquet", index=False)
    for name, data in value.files.items():
        (tmp / "files" / name).write_bytes(data)
    (tmp / "facts.json").write_text(facts_json(value.facts), encoding="utf-8")
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _read_parquet(path: StorePath) -> pd.DataFrame:
    if is_local(path):
        return pd.read_parquet(path)
    with path.open("rb") as fh:
        return pd.read_parquet(fh)


def _read_table_set(folder: StorePath) -> TableSet:
    import json

    tables = {p.stem: _read_parquet(p) for p in sorted(folder.glob("*.parquet"))}
    files_dir = folder / "files"
    # Object storage may hold no ``files/`` at all (no empty folders) or list a folder marker.
    listed = sorted(files_dir.iterdir()) if files_dir.exists() else []
    files = {p.name: p.read_bytes() for p in listed if p.is_file()}
    facts = json.loads((folder / "facts.json").read_text(encoding="utf-8"))
    return TableSet(tables, facts, files)


def _with_suffix(base: StorePath, suffix: str) -> StorePath:
    return base.with_name(base.name + suffix)


def write_value(base: StorePath, value: object) -> StorePath:
    """Store a DataFrame (``.parquet``), a TableSet (folder) or a Record (``.json``) at ``base``
    (a local path or an object-storage ``UPath``)."""
    local = is_local(base)
    if local:
        base.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(value, pd.DataFrame):
        path = _with_suffix(base, ".parquet")
        if not local:  # one PUT: atomic on object storage
            with path.open("wb") as fh:
                value.to_parquet(fh, index=False)
            return path
        tmp = path.with_name(path.name + ".tmp")
        value.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        return path
    if isinstance(value, TableSet):
        _write_table_set(value, base)
        return base
    if isinstance(value, Record):
        path = _with_suffix(base, ".json")
        if not local:
            path.write_text(record_to_json(value), encoding="utf-8")
            return path
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(record_to_json(value), encoding="utf-8")
        os.replace(tmp, path)
        return path
    raise TypeError(
        f"StudyIOManager stores DataFrames, TableSets and Records; received "
        f"{type(value).__name__}. Return one of them from the asset."
    )


def read_value(base: StorePath) -> Any:
    """The value :func:`write_value` stored at ``base``.

    Raises
    ------
    FileNotFoundError
        Naming the path when nothing was stored there (the asset was never materialized).
    """
    if _with_suffix(base, ".parquet").is_file():
        return _read_parquet(_with_suffix(base, ".parquet"))
    if _with_suffix(base, ".json").is_file():
        return record_from_json(_with_suffix(base, ".json").read_text(encoding="utf-8"))
    if (base / "facts.json").is_file():
        return _read_table_set(base)
    raise FileNotFoundError(
        f"{base}: nothing stored for this asset (materialize it first, or check $CLINAUDIT_HOME "
        f"and ${STORE_URL_ENV})"
    )


class StudyIOManager(dg.ConfigurableIOManager):
    """Stores asset outputs under ``<store>/tables/<asset key>/<partition or __all__>`` (the store
    is ``<artifacts>`` unless ``ClinauditHome.store_url`` / ``$CLINAUDIT_STORE_URL`` names a
    ``file://`` or ``s3://`` location):
    DataFrames as Parquet, :class:`TableSet` folders (tables, ``facts.json``, ``files/``) and
    :class:`Record` JSON, never pickles.

    A downstream asset that depends on several partitions receives ``dict[partition, value]``; a
    partition not materialized yet is left out with a warning (one failed site never blocks the
    others).
    """

    home: ClinauditHome

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        partition = context.partition_key if context.has_asset_partitions else None
        path = write_value(stored_path(self.home, context.asset_key, partition), obj)
        context.add_output_metadata({"path": dg.MetadataValue.path(describe(path))})

    def load_input(self, context: dg.InputContext) -> Any:
        key = context.asset_key
        if not context.has_asset_partitions:
            return read_value(stored_path(self.home, key, None))
        keys = list(context.asset_partition_keys)
        if context.has_partition_key and len(keys) == 1:
            return read_value(stored_path(self.home, key, keys[0]))
        out: dict[str, Any] = {}
        absent = []
        for k in sorted(keys):
            try:
                out[k] = read_value(stored_path(self.home, key, k))
            except FileNotFoundError:
                absent.append(k)
        if absent:
            context.log.warning(
                f"{key.to_user_string()}: partitions {absent} are not materialized and are left "
                "out of this input"
            )
        return out


def read_stored(home: ClinauditHome, key: str | dg.AssetKey, partition: str | None = None) -> Any:
    """What the IO manager stored for ``key`` (``"study/asset"``) outside a run (CLI, tests)."""
    asset_key = key if isinstance(key, dg.AssetKey) else dg.AssetKey(key.split("/"))
    return read_value(stored_path(home, asset_key, partition))


def stored_partitions(home: ClinauditHome, key: str | dg.AssetKey) -> list[str]:
    """The partitions the IO manager holds a value of, for ``key`` (sorted)."""
    asset_key = key if isinstance(key, dg.AssetKey) else dg.AssetKey(key.split("/"))
    folder = home.store.joinpath("tables", *asset_key.path)
    if not folder.is_dir():
        return []
    names = {p.name.split(".")[0] for p in folder.iterdir() if not p.name.startswith(".")}
    return sorted(names - {"__all__"})


def study_resources(
    home: ClinauditHome,
    *,
    models: Mapping[str, StudyModel] | None = None,
    policies: Mapping[str, StudyPolicy] | None = None,
    studies: list[str],
) -> dict[str, object]:
    """Every resource the studies' assets use, around one ``home``: ``home``, ``table_io``,
    ``signer``, ``landing_watch`` and per study ``<study>_model`` / ``<study>_policy``."""
    out: dict[str, object] = {
        "home": home,
        "table_io": StudyIOManager(home=home),
        "signer": ReportSigner(),
        "landing_watch": LandingWatch(),
    }
    for name in studies:
        out[f"{name}_model"] = (models or {}).get(name) or StudyModel(study=name)
        out[f"{name}_policy"] = (policies or {}).get(name) or StudyPolicy(study=name)
    return out

"""Dagster resources: run-time directories, the pseudonymisation key and the table IO manager.

Defaults live here and nowhere else. Paths come from the resource config, else ``CLINAUDIT_HOME``
(default ``./var``); environment variables are read when a run uses them, never at import time.
"""

import os
import secrets
from pathlib import Path

import dagster as dg
import pandas as pd

#: Environment variables the project reads, when a run uses them (never at import).
HOME_ENV = "CLINAUDIT_HOME"
PSEUDONYM_KEY_ENV = "CLINAUDIT_PSEUDONYM_KEY"


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


def table_path(home: ClinauditHome, key: dg.AssetKey, partition: str | None) -> Path:
    """Where ``ParquetIOManager`` keeps an asset's table (one file per partition)."""
    return home.artifacts.joinpath("tables", *key.path) / f"{partition or '__all__'}.parquet"


class ParquetIOManager(dg.ConfigurableIOManager):
    """Stores DataFrame asset outputs as Parquet under
    ``<home artifacts>/tables/<asset key>/<partition>.parquet``.

    A downstream asset that depends on several partitions receives ``dict[partition, DataFrame]``.
    """

    home: ClinauditHome

    def _path(self, key: dg.AssetKey, partition: str | None) -> Path:
        return table_path(self.home, key, partition)

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(
                f"ParquetIOManager stores DataFrames; asset {context.asset_key.to_user_string()} "
                f"returned {type(obj).__name__}. Return a DataFrame or use another io_manager_key."
            )
        partition = context.partition_key if context.has_asset_partitions else None
        path = self._path(context.asset_key, partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".parquet.tmp")
        obj.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path.resolve()))})

    def load_input(self, context: dg.InputContext) -> pd.DataFrame | dict[str, pd.DataFrame]:
        key = context.asset_key
        if context.has_asset_partitions:
            keys = list(context.asset_partition_keys)
            # A partitioned consumer reads its own partition; an unpartitioned one reads them all.
            if context.has_partition_key and len(keys) == 1:
                return pd.read_parquet(self._path(key, keys[0]))
            out, absent = {}, []
            for k in sorted(keys):
                path = self._path(key, k)
                if path.exists():
                    out[k] = pd.read_parquet(path)
                else:
                    absent.append(k)
            if absent:
                # A site whose ingest failed has no table yet; it must not block the other sites.
                context.log.warning(
                    f"{key.to_user_string()}: partitions {absent} are not materialized and are "
                    "left out of this cross-site input"
                )
            return out
        return pd.read_parquet(self._path(key, None))

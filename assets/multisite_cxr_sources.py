"""Study ``multisite_cxr``: the two inputs of an audit that are files, not data: observed sources.

``vendor_model_package_file`` (what is audited) and ``cxr_decision_policy_file`` (the go / no-go
rules) are observable source assets. An observation hashes the file(s) the configured resource
points at; the hash is the source's data version, so editing the policy or replacing the model
package changes the data version and declarative automation re-runs what depends on it
(``orchestration/automation.py``). Observing reads files only; nothing is trained or decided.
"""

import hashlib
import json
import warnings
from dataclasses import asdict
from pathlib import Path

import dagster as dg

from clinaudit.assets.multisite_cxr import GROUP, OWNERS
from clinaudit.assets.multisite_cxr_mitigation import DecisionPolicy
from clinaudit.assets.multisite_cxr_model import AuditedModel
from clinaudit.models.package import package_sha256
from clinaudit.sources.landing import sha256_file

# multi_observable_source_asset is marked beta in Dagster 1.13; it is how sources get owners.
warnings.filterwarnings(
    "ignore", message=r"Function `multi_observable_source_asset`", category=dg.BetaWarning
)

POLICY_SOURCE = "cxr_decision_policy_file"
MODEL_SOURCE = "vendor_model_package_file"


def model_source_version(audited_model: AuditedModel) -> tuple[str, dict[str, object]]:
    """Data version of what ``audited_model`` points at, and metadata saying what was hashed.

    ``package``: the package sha256 (canonical card + weights, the same identity the audit
    records); ``scores``: ``"scores:"`` + each scores CSV's sha256 prefix; ``embedded``:
    ``"embedded-spec:"`` + sha256 of the training spec (the training data is the reference
    site's validated table, a dependency of ``vendor_model`` in its own right).
    """
    mode = audited_model.mode()
    if mode == "package":
        path = Path(str(audited_model.package_dir)).resolve()
        digest = package_sha256(path)
        return digest, {"mode": mode, "package_dir": dg.MetadataValue.path(str(path))}
    if mode == "scores":
        path = Path(str(audited_model.scores_dir)).resolve()
        files = [path] if path.is_file() else sorted(path.glob("*.csv"))
        if not files:
            raise FileNotFoundError(
                f"{path}: no <site>.csv vendor scores files to observe; set "
                "audited_model.scores_dir to the directory holding them (docs/formats.md)"
            )
        digests = {f.name: sha256_file(f) for f in files}
        version = "scores:" + ",".join(f"{k}={v[:16]}" for k, v in digests.items())
        return version, {"mode": mode, "scores_files": dg.MetadataValue.json(digests)}
    spec = json.dumps(asdict(audited_model.training_spec()), sort_keys=True, default=str)
    digest = hashlib.sha256(spec.encode()).hexdigest()
    meta = {"mode": mode, "training_spec": dg.MetadataValue.json(json.loads(spec))}
    return f"embedded-spec:{digest}", meta


@dg.multi_observable_source_asset(
    specs=[
        dg.AssetSpec(
            MODEL_SOURCE,
            group_name=GROUP,
            owners=OWNERS,
            description="The audited model as configured (resource audited_model): the vendor "
            "package's sha256, the vendor scores files' sha256, or the embedded model's training "
            "spec. Observed periodically; a new data version re-materializes vendor_model, then "
            "re-scores every site and re-audits.",
        )
    ],
    name="observe_vendor_model_package_file",
)
def vendor_model_package_file(context: dg.AssetExecutionContext, audited_model: AuditedModel):
    version, meta = model_source_version(audited_model)
    context.log.info(f"audited model ({meta['mode']}): data version {version[:40]}")
    yield dg.ObserveResult(
        asset_key=MODEL_SOURCE, data_version=dg.DataVersion(version), metadata=meta
    )


@dg.multi_observable_source_asset(
    specs=[
        dg.AssetSpec(
            POLICY_SOURCE,
            group_name=GROUP,
            owners=OWNERS,
            description="The go / no-go decision policy file (resource policy: its path, else "
            "the policy shipped with clinaudit). Data version = sha256 of the file bytes; the "
            "file is parsed strictly, so an invalid edit fails here, before any decision. A new "
            "version re-runs the decisions and the audit package.",
        )
    ],
    name="observe_cxr_decision_policy_file",
)
def cxr_decision_policy_file(context: dg.AssetExecutionContext, policy: DecisionPolicy):
    rules = policy.load()
    context.log.info(f"policy {rules.policy_id} v{rules.version}: sha256 {rules.sha256[:16]}")
    yield dg.ObserveResult(
        asset_key=POLICY_SOURCE,
        data_version=dg.DataVersion(rules.sha256),
        metadata={
            "path": dg.MetadataValue.path(rules.source),
            "policy_id": rules.policy_id,
            "policy_version": rules.version,
            "sha256": rules.sha256,
        },
    )


ASSETS = [vendor_model_package_file, cxr_decision_policy_file]

"""A partition left out of a cross-partition audit is named with the failure that caused it."""

import dagster as dg

from clinaudit.assets.stage_failures import explain_left_out

PARTS = dg.DynamicPartitionsDefinition(name="sites")


def _assets(fail: set[str]):
    @dg.asset(partitions_def=PARTS, key=["toy", "predictions"])
    def predictions(context: dg.AssetExecutionContext) -> int:
        if context.partition_key in fail:
            raise ValueError(
                f"scores/{context.partition_key}.csv: line 3, column 'p': 1.5 (fix: X)"
            )
        return 1

    return [predictions]


def test_a_failed_stage_replaces_the_generic_reason_until_it_succeeds() -> None:
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("sites", ["a", "b", "c"])
        for site in ("a", "b"):
            dg.materialize(_assets({"b"}), partition_key=site, instance=instance,
                           raise_on_error=False)  # fmt: skip
        generic = {"b": "no predictions yet (re-run the site's predictions)"}
        got = explain_left_out(instance, "toy", generic, ["a", "b", "c"], ["a"])
        assert got["b"].startswith("its predictions stage failed: ")
        assert "scores/b.csv: line 3, column 'p': 1.5 (fix: X)" in got["b"]
        assert got["c"] == "not ingested" and "a" not in got
        # A later success means the old failure no longer explains anything.
        dg.materialize(_assets(set()), partition_key="b", instance=instance)
        stale = {"b": "predictions are stale"}
        assert explain_left_out(instance, "toy", stale, ["a", "b"], ["a"]) == stale

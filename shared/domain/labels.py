"""The labels that mark a cloud VM as this deployment's: reconcile lists and judges only these."""

MANAGED_BY = "dark-orchestrator"


def managed_labels(deployment: str) -> dict[str, str]:
    return {"managed-by": MANAGED_BY, "deployment": deployment}

"""Reading a /metrics body the way Prometheus would: with prometheus_client's own parser."""

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def parse(text: str) -> dict:
    """The metric families of an exposition, by name (parsing fails the test on a bad body)."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def matching(families: dict, sample_name: str, **labels: str) -> list[Sample]:
    return [
        sample
        for family in families.values()
        for sample in family.samples
        if sample.name == sample_name and labels.items() <= sample.labels.items()
    ]


def total(families: dict, sample_name: str, **labels: str) -> float:
    """The sum of the samples named `sample_name` whose labels include `labels` (0 when none)."""
    return sum(sample.value for sample in matching(families, sample_name, **labels))

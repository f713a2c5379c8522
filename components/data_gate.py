"""DataGate: stops the run when ExampleValidator found anomalies, before any model is trained.

TFX's ExampleValidator records anomalies but lets the pipeline go on; a production run must not train
(and later push) a model on data that broke the schema. The error lists every anomaly, per split.
"""

import os
from typing import List

from tensorflow_data_validation.utils import anomalies_util
from tfx import v1 as tfx
from tfx.types import artifact_utils

ANOMALIES_FILE = "SchemaDiff.pb"


def describe_anomalies(anomalies_uri: str, split_names: List[str]) -> List[str]:
    """One readable line per anomaly: split, feature, short and long description."""
    lines = []
    for split in split_names:
        path = os.path.join(anomalies_uri, f"Split-{split}", ANOMALIES_FILE)
        anomalies = anomalies_util.load_anomalies_binary(path)
        for feature, info in sorted(anomalies.anomaly_info.items()):
            lines.append(f"split '{split}', feature '{feature}': {info.short_description} ({info.description})")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            lines.append(f"split '{split}', whole dataset: {info.short_description} ({info.description})")
    return lines


@tfx.dsl.components.component
def DataGate(anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies]) -> None:
    splits = artifact_utils.decode_split_names(anomalies.split_names)
    problems = describe_anomalies(anomalies.uri, splits)
    if problems:
        raise RuntimeError("The data does not match the schema of its task description; stopping before "
                           "training:\n  " + "\n  ".join(problems))

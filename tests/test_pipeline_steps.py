"""The step table (pipeline/steps.py): every step names a real function, real config fields, known inputs."""

import inspect

import pytest

from cleannet_tf import config as config_lib
from cleannet_tf.pipeline import records
from cleannet_tf.pipeline.steps import BY_NAME, STEPS, TABLE


@pytest.mark.parametrize("step", TABLE, ids=lambda step: step.name)
def test_each_step_names_its_function_fields_and_inputs(step):
    function = step.load()
    assert callable(function) and list(inspect.signature(function).parameters)[:2] == ["config", "workdir"]
    fields = records.select_fields(config_lib.default_config(), step.fields)  # KeyError on a field not in the schema
    assert fields and not any(field.startswith("runtime.") for field in fields)
    assert set(step.inputs) <= set(STEPS[:STEPS.index(step.name)])  # only earlier steps


def test_the_inputs_a_config_makes_moot_are_dropped():
    config = config_lib.default_config()
    assert records._upstream("export", config) == ["verify", "train_classifier", "weighted_classifiers", "extract"]
    assert records._upstream("extract", config) == []
    config.data.features, config.model.weights, config.classifier.after_verify = "f.npz", "classifier", ()
    assert records._upstream("export", config) == ["verify", "train_classifier"]
    assert records._upstream("extract", config) == ["train_classifier"]
    assert records._upstream("train", config) == ["refs"]
    with pytest.raises(ValueError, match="Unknown step 'bogus'"):
        records._upstream("bogus", config)
    assert list(BY_NAME) == list(STEPS)

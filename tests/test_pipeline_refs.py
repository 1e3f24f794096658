"""cleannet-refs (cleannet_tf/pipeline/refs.py) on precomputed features."""



from error_helpers import _config

from cleannet_tf.pipeline.refs import run_refs
from cleannet_tf.pipeline.table import load_table


def test_refs_run_on_features_without_the_test_split(tmp_path):
    from conftest import write_feature_dataset


    overrides, _, _ = write_feature_dataset(tmp_path / "data", num_classes=3, per_class=30)
    tsv = overrides["data.root"]
    with open(tsv, "a") as f:
        f.write("".join(f"test{i}.jpg\tclass{i % 3}\t\ttest\n" for i in range(6)))
    config = _config(**{k.replace(".", "__"): v for k, v in overrides.items()}, refs__num_references=4,
                     refs__n_init=1)
    table = load_table(config, str(tmp_path / "work"), steps=("refs",))
    reference_sets = run_refs(config, str(tmp_path / "work"), table=table, progress=False)
    assert reference_sets.references.shape[:2] == (3, 4)

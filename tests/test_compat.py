"""Old public names keep working for one release: every old module path still imports, with its names."""

import importlib
import subprocess
import sys

import pytest

# old module -> names that must be there (tests, benchmarks, README and users used them)
OLD_NAMES = {
    "cleannet_tf": "CleanNetDetector build_cleannet find_label_issues sample_weights __version__",
    "cleannet_tf.serving": "Client start_server ModelManager ModelSpecConfig ServingError parse_model_config",
    "cleannet_tf.serving.server": "ModelServer replay_warmup MAX_MESSAGE_BYTES",
    "cleannet_tf.serving.tensor_proto": "to_tensor_proto",
    "cleannet_tf.datasets": "DatasetError LabelTable SPLIT_TEST SPLIT_TRAIN SPLIT_VAL UNKNOWN HELDOUT_SKIP_REASON "
                            "apply_heldout load_precomputed_features load_table read_clothing1m read_food101n "
                            "read_heldout_list read_tsv",
    "cleannet_tf.demo_data": "LOOKALIKE generate_demo_dataset heldout_classes read_demo_truth split_source_digits",
    "cleannet_tf.demo_lib": "centroid_cosine_scores run_demo format_summary",
    "cleannet_tf.config": "default_config get_config validate resolve_data_root save_config split_names",
    "cleannet_tf.detector": "CleanNetDetector detector_config",
    "cleannet_tf.detectors": "MODELS StackedDetector class_means detection_signals knn_label_agreement log_normalize "
                             "own_class_margin per_class_standardize robust_class_means robust_class_members",
    "cleannet_tf.ops": "signed_log1p unit_rows log_normalize class_means trimmed_class_core own_and_margin",
    "cleannet_tf.verifier": "MODE_SCORING SCORINGS SIGNAL_NAMES STACKED_TEMPERATURE build_verifier class_scores "
                            "fit_signal_weights verification_head_of",
    "cleannet_tf.verify_lib": "fit_verifier load_verifier run_verify verify_dir",
    "cleannet_tf.export_lib": "CLASSIFIER VERIFIER WARMUP_FILE build_classifier_archive build_verifier_archive "
                              "example_of next_version publish warmup_records write_models_config export_all",
    "cleannet_tf.extract_lib": "extract_features open_features run_extract features_dir",
    "cleannet_tf.feature_store": "FeatureStore ArrayFeatures load_npz CorruptFileError",
    "cleannet_tf.input_pipeline": "decode_image make_image_dataset missing_rows",
    "cleannet_tf.backbones": "ImagePreprocessing build_backbone build_classifier feature_dim_of",
    "cleannet_tf.layers": "ContextAttentionPooling FeatureNormalization CosineSimilarity signed_log1p",
    "cleannet_tf.model": "build_cleannet encode_classes query_encoder_of reference_encoder_of "
                         "score_with_class_embeddings similarity_to_all_classes",
    "cleannet_tf.losses": "LossWeights other_class_loss per_sample_loss reconstruction_loss unverified_loss "
                          "verification_loss",
    "cleannet_tf.metrics": "best_threshold detection_metrics per_class_error",
    "cleannet_tf.references": "ReferenceSets build_reference_sets core_rows references_path kmeans_float32",
    "cleannet_tf.train_data": "StepSampler TrainingData prepare_training_data",
    "cleannet_tf.train_lib": "CleanNetTask build_model_from_config calibration_classes cleannet_dir "
                             "load_training_inputs run_train score_pool_rows train_cleannet validation_metrics",
    "cleannet_tf.classifier_lib": "ClassifierTask NoisyThenFinetuneSchedule train_classifier weighted_cross_entropy "
                                  "classifier_dir",
    "cleannet_tf.training_loop": "Task train every",
    "cleannet_tf.pipeline": "STEPS classifier_weights reference_rows run_refs run_steps run_train_classifier "
                            "step_complete export_dir run_step adopt_legacy",
    "cleannet_tf.distribute": "build_strategy is_chief configure_logical_cpus",
    "cleannet_tf.scores_io": "ScoresTable read_scores_tsv write_scores_tsv",
    "cleannet_tf.active_verification": "propose_verification write_verification_tsv",
    "cleannet_tf.report": "FIGURES write_report",
    "cleannet_tf.label_noise": "find_label_issues sample_weights",
    "cleannet_tf.neighbours": "faiss_available",
    "cleannet_tf.efficientnet_lite": "build_efficientnet_lite0",
    "cleannet_tf.checkpointing": "save_model write_json",
    "cleannet_tf.workdir_lock": "acquire release holds locked",
    "cleannet_tf.cli": "setup default_config_path set_default_config",
}
ENTRY_MODULES = ["train_classifier", "extract", "refs", "train", "verify", "export", "serve", "run", "demo",
                 "config_cli"]


@pytest.mark.parametrize("module", sorted(OLD_NAMES))
def test_old_module_has_its_names(module):
    imported = importlib.import_module(module)
    missing = [name for name in OLD_NAMES[module].split() if not hasattr(imported, name)]
    assert not missing, f"{module} lacks {missing}"


def test_moved_whole_modules_are_the_new_ones():
    # monkeypatching the old name patches the code that runs
    from cleannet_tf.detection import signals
    from cleannet_tf.features import pool

    assert importlib.import_module("cleannet_tf.detectors") is signals
    assert importlib.import_module("cleannet_tf.train_data") is pool


@pytest.mark.parametrize("module", [m for m in ENTRY_MODULES if m != "export"])  # export/ is a package now;
def test_old_entry_module_keeps_main_and_run(module):  # python -m cleannet_tf.export runs its __main__.py
    imported = importlib.import_module(f"cleannet_tf.{module}")
    assert callable(imported.main) and callable(imported.run)


@pytest.mark.slow
def test_python_dash_m_old_entry_modules_start():
    # `python -m cleannet_tf.<step> --helpshort` for every old entry module, in parallel
    processes = {m: subprocess.Popen([sys.executable, "-m", f"cleannet_tf.{m}", "--helpshort"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for m in ENTRY_MODULES}
    failed = {}
    for module, process in processes.items():
        out, _ = process.communicate(timeout=600)
        if "Try --helpfull" not in out or "Traceback" in out:  # absl exits 1 after --helpshort
            failed[module] = out[-500:]
    assert not failed, failed

"""scores_tsv.py: the file round-trips, files of earlier versions still read, a bad file is named with its line."""

import numpy as np
import pytest

from cleannet_tf.pipeline import scores_tsv


def table(n: int = 4) -> scores_tsv.ScoresTable:
    scores = np.array([-1.0, -1.0, 0.25, 0.9], np.float32)[:n]
    return scores_tsv.ScoresTable(
        keys=np.array([f"c/{i}.jpg" for i in range(n)]), labels=np.array(["c"] * n), scores=scores,
        noisy=scores < 0, weight_soft=np.clip(scores, 0, 1), weight_hard=(scores >= 0).astype(np.float32),
        suggested_labels=np.array(["d"] * n), suggested_scores=np.full(n, 0.5, np.float32),
        p_correct=(scores + 1) / 2, rank_score=np.array([-31.25, -17.5, 0.51, 2.9])[:n])


def test_round_trip_keeps_the_rank_score_that_orders_tied_scores(tmp_path):
    path = str(tmp_path / "scores.tsv")
    scores_tsv.write_scores_tsv(path, table())
    read = scores_tsv.read_scores_tsv(path)
    np.testing.assert_array_equal(read.keys, table().keys)
    np.testing.assert_allclose(read.scores, table().scores)
    np.testing.assert_allclose(read.rank_score, table().rank_score)
    assert read.scores[0] == read.scores[1] and read.rank_score[0] < read.rank_score[1]


@pytest.mark.parametrize("columns", [8, 9])
def test_files_of_earlier_versions_read_with_defaults(tmp_path, columns):
    path = str(tmp_path / "scores.tsv")
    scores_tsv.write_scores_tsv(path, table())
    lines = [line.rstrip("\n").split("\t")[:columns] for line in open(path)]
    with open(path, "w") as f:
        f.writelines("\t".join(fields) + "\n" for fields in lines)
    read = scores_tsv.read_scores_tsv(path)
    np.testing.assert_allclose(read.rank_score, read.scores)  # no rank_score: the score
    assert np.isnan(read.p_correct).all() == (columns == 8)


def test_bad_header_and_short_row_name_the_file_and_line(tmp_path):
    path = tmp_path / "scores.tsv"
    scores_tsv.write_scores_tsv(str(path), table())
    text = path.read_text().splitlines()
    path.write_text("\n".join([text[0].replace("rank_score", "rank"), *text[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"scores\.tsv:1: expected header"):
        scores_tsv.read_scores_tsv(str(path))
    path.write_text("\n".join([text[0], text[1], text[2].rsplit("\t", 1)[0]]) + "\n")
    with pytest.raises(ValueError, match=r"scores\.tsv:3: expected 10 tab-separated fields, got 9"):
        scores_tsv.read_scores_tsv(str(path))

"""data/folder.py: class subfolders of images, read as keras.utils.image_dataset_from_directory reads them.

Each test writes small real images (PIL) under tmp_path.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from cleannet_tf.data.folder import read_folder
from cleannet_tf.data.reading import DatasetError
from cleannet_tf.data.table import SPLIT_TEST, SPLIT_TRAIN, UNKNOWN

_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF"}


def write_image(path, color=(200, 30, 30)) -> str:
    """A real 6x5 image in the format its extension names (any case); returns the path."""
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (6, 5), color).save(path, format=_FORMATS[os.path.splitext(path)[1].lower()])
    return path


def write_file(path, data: bytes = b"not an image") -> str:
    """Writes `data` at `path` (its folders made); returns the path."""
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def make_folder(root, files) -> str:
    """Writes `files` (paths under root; image extensions get images, others text); returns root."""
    for name in files:
        if os.path.splitext(name)[1].lower() in _FORMATS:
            write_image(os.path.join(root, name))
        else:
            write_file(os.path.join(root, name))
    return str(root)


def test_folder_happy_path(tmp_path):
    root = make_folder(tmp_path / "photos", ["dog/b.jpg", "dog/a.png", "cat/x.JPEG", "cat/y.bmp", "bird/z.gif"])
    table = read_folder(root)
    assert table.class_names == ("bird", "cat", "dog")
    assert table.keys.tolist() == ["bird/z.gif", "cat/x.JPEG", "cat/y.bmp", "dog/a.png", "dog/b.jpg"]
    assert table.paths.tolist() == [os.path.join(root, key) for key in table.keys]
    np.testing.assert_array_equal(table.labels, [0, 1, 1, 2, 2])
    np.testing.assert_array_equal(table.verification, [UNKNOWN] * 5)
    np.testing.assert_array_equal(table.split, [SPLIT_TRAIN] * 5)
    assert table.skipped == {} and "5 images, 3 classes" in table.summary()


def test_folder_lists_what_keras_lists_in_its_order(tmp_path):
    import keras

    files = ["Zebra/1.jpg", "apple/B.PNG", "apple/a.jpg", "apple/.hidden.jpg", "apple/notes.txt", "apple/.DS_Store",
             "apple/sub/deep.jpg", "apple/sub/.deeper/d.png", "apple/sub b/e.jpg", "apple/Sub/f.gif",
             "_under/x.jpeg", "10/x.bmp", "9/x.jpg", ".git/y.jpg", "loose.jpg", "readme.md"]
    root = make_folder(tmp_path / "photos", files)
    os.symlink(os.path.join(root, "apple", "sub"), os.path.join(root, "9", "linked_folder"))  # not followed
    os.symlink(os.path.join(root, "apple", "a.jpg"), os.path.join(root, "9", "linked.jpg"))  # a file: listed
    table = read_folder(root)
    dataset = keras.utils.image_dataset_from_directory(root, labels="inferred", shuffle=False, batch_size=None,
                                                       image_size=(5, 6))
    assert list(table.class_names) == dataset.class_names == ["10", "9", "Zebra", "_under", "apple"]
    assert table.paths.tolist() == dataset.file_paths
    assert "apple/.hidden.jpg" in table.keys and "9/linked.jpg" in table.keys  # as Keras: hidden files count
    labels = np.concatenate([label.numpy()[None] for _, label in dataset])
    np.testing.assert_array_equal(table.labels, labels)
    # notes.txt, .DS_Store (class folders), loose.jpg and readme.md (the root): counted, not silently dropped.
    assert sum(table.skipped.values()) == 4 and len(table.skipped) == 2


@pytest.mark.parametrize("root_name", ["DATA/train", "DATA"])
def test_folder_train_val_test_layout(tmp_path, root_name):
    data = tmp_path / "DATA"
    make_folder(data, ["train/cat/c1.jpg", "train/cat/c2.jpg", "train/dog/d1.jpg", "val/dog/v1.png",
                       "test/cat/t1.jpg", "test/dog/t2.jpg"])
    table = read_folder(str(tmp_path / root_name))
    assert table.class_names == ("cat", "dog")
    assert table.keys.tolist() == ["cat/c1.jpg", "cat/c2.jpg", "dog/d1.jpg", "val/dog/v1.png", "test/cat/t1.jpg",
                                   "test/dog/t2.jpg"]
    assert table.paths[3] == str(data / "val" / "dog" / "v1.png")
    np.testing.assert_array_equal(table.split, [SPLIT_TRAIN] * 3 + [SPLIT_TEST] * 3)
    np.testing.assert_array_equal(table.labels, [0, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(table.verification, [UNKNOWN] * 6)


def test_folder_classes_named_train_are_classes_when_they_hold_images(tmp_path):
    # train/ and test/ with images directly in them: two classes, not the split layout.
    root = make_folder(tmp_path / "d", ["train/a.jpg", "test/b.jpg"])
    table = read_folder(root)
    assert table.class_names == ("test", "train") and (table.split == SPLIT_TRAIN).all()
    # A folder named "photos" with a sibling "test": the sibling is not read (only a root named train has them).
    make_folder(tmp_path / "e", ["photos/cat/a.jpg", "test/cat/b.jpg"])
    assert read_folder(str(tmp_path / "e" / "photos")).keys.tolist() == ["cat/a.jpg"]


@pytest.mark.parametrize("files, pattern", [
    ([], r"photos: no class subfolders \(expected ROOT/<class>/<image>\) and it is empty\."),
    (["a.jpg", "b.jpg"], r"photos: no class subfolders .*its images are directly in it: put each class's images"),
    (["cat/a.jpg", "dog/notes.txt"], r"photos/dog: class folder with no image \(files ending in \.bmp \.gif \.jpeg "
                                     r"\.jpg \.png, in any case\)"),
    (["cat/a.jpg", "dog/.keep"], r"photos/dog: class folder with no image"),
])
def test_folder_bad_input(tmp_path, files, pattern):
    root = tmp_path / "photos"
    root.mkdir()
    make_folder(root, files)
    with pytest.raises(DatasetError, match=pattern):
        read_folder(str(root))


def test_folder_missing_root_unknown_clean_class_and_bad_file_names(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere: folder not found \(expected class subfolders"):
        read_folder(str(tmp_path / "nowhere"))
    make_folder(tmp_path / "DATA", ["train/cat/a.jpg", "test/cow/b.jpg"])
    with pytest.raises(DatasetError, match=r"test/cow: class 'cow' is not a class folder of .*DATA/train"):
        read_folder(str(tmp_path / "DATA"))
    root = make_folder(tmp_path / "tabs", ["cat/a.jpg", "cat/b\tc.jpg"])
    with pytest.raises(DatasetError, match=r"holds a tab or a line break"):
        read_folder(root)
    root = make_folder(tmp_path / "latin1", ["cat/a.jpg"])
    write_image(os.path.join(os.fsencode(root), b"cat", b"caf\xe9.jpg").decode("utf-8", "surrogateescape"))
    with pytest.raises(DatasetError, match=r"caf.*\.jpg'?: the file name is not UTF-8 text; rename the file"):
        read_folder(root)

"""The folder reader: class subfolders of images (the layout keras.utils.image_dataset_from_directory reads).

    ROOT/<class>/<image>                      data.root = ROOT: every image is a train row
    DATA/train/<class>/<image>                data.root = DATA/train, or DATA when its only subfolders are
    DATA/val/<class>/<image>    (optional)      train, val and test (and DATA/train has class subfolders):
    DATA/test/<class>/<image>   (optional)      val/ and test/ hold clean (checked) labels: test rows

As Keras reads it (keras 3 `image_dataset_from_directory`, labels="inferred", follow_links=False):
- classes are the subfolders of the root whose names do not start with ".", sorted (Python's `sorted`);
- a class's images are the files anywhere under its folder (os.walk, symbolic links to folders not followed)
  whose name ends, in any case, with .bmp, .gif, .jpeg, .jpg or .png (hidden files included, as in Keras),
  in the order of (folder path, file name), both sorted.
Files without such an extension, and files directly in the root, are counted in `LabelTable.skipped`.

Rows: the train folder's images (split train; label = their folder, the noisy label; none verified: a folder has
no verification labels), then val/'s and test/'s (split test: their labels are ground truth, never trained on).
Key = the image's path under the train folder, `<class>/<image>`; `val/<class>/<image>` and
`test/<class>/<image>` for the clean folders. Imports `data.reading`, `data.table`.
"""

from __future__ import annotations

import os

from absl import logging

from cleannet_tf.data.reading import DatasetError, add_skipped, normalize_key
from cleannet_tf.data.table import SPLIT_TEST, SPLIT_TRAIN, UNKNOWN, LabelTable, make_table

__all__ = ["CLEAN_FOLDERS", "IMAGE_EXTENSIONS", "class_folders", "has_image", "pool_and_clean_folders",
           "read_folder"]

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # keras.utils.image_dataset_from_directory's



CLEAN_FOLDERS = ("val", "test")  # siblings of DATA/train whose labels are ground truth



_EXTENSIONS_TEXT = " ".join(IMAGE_EXTENSIONS)



def class_folders(directory: str) -> list[str]:
    """The class names under `directory` as Keras finds them: subfolders not starting with ".", sorted."""
    return [name for name in sorted(os.listdir(directory))
            if not name.startswith(".") and os.path.isdir(os.path.join(directory, name))]



def has_image(directory: str) -> bool:
    """Whether `directory` holds an image file (by extension) directly."""
    with os.scandir(directory) as entries:
        return any(entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file() for entry in entries)



def pool_and_clean_folders(root: str) -> tuple[str, list[tuple[str, str]]]:
    """The folder of the noisy pool and the clean folders beside it, as (name, path): see the module docstring."""
    names = class_folders(root)
    train = os.path.join(root, "train")
    if "train" in names and set(names) <= {"train", *CLEAN_FOLDERS} and class_folders(train):
        base, pool = root, train
    elif os.path.basename(root) == "train":
        base, pool = os.path.dirname(root), root
    else:
        return root, []
    return pool, [(name, os.path.join(base, name)) for name in CLEAN_FOLDERS
                  if os.path.isdir(os.path.join(base, name))]



def _class_images(class_dir: str, prefix: str, skipped_files: list[int]) -> list[str]:
    """Keys (prefix + path under class_dir's parent, "/"-separated) of the images under one class folder."""
    keys = []
    for dirpath, _, files in sorted(os.walk(class_dir), key=lambda walked: walked[0]):
        relative = os.path.relpath(dirpath, class_dir)
        folder = prefix if relative == "." else prefix + relative.replace(os.sep, "/") + "/"
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                keys.append(folder + name)
            else:
                skipped_files[0] += 1
    return keys



def _check_key(key: str, directory: str) -> str:
    """The key, or a DatasetError naming the file when its name cannot be a key (not UTF-8, a tab or line break)."""
    at = os.path.join(directory, key)
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise DatasetError(f"{at!r}: the file name is not UTF-8 text; rename the file.") from None
    return normalize_key(key, at, directory)



def read_folder(root: str) -> LabelTable:
    """Reads class subfolders of images; see the module docstring for the layout, keys and splits.

    Args:
        root: the folder of class subfolders (or its parent DATA holding train/, val/, test/).

    Returns:
        The table: N = images found (train folder, then val/, then test/).

    Raises:
        DatasetError: naming the folder: no class subfolders, a class folder with no image, a val/ or test/
        class that is not a class of the train folder, a file name that cannot be a key.
    """
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: folder not found (expected class subfolders of images, ROOT/<class>/<image>).")
    pool, clean = pool_and_clean_folders(root)
    class_names = class_folders(pool)
    if not class_names:
        loose = has_image(pool)
        raise DatasetError(f"{pool}: no class subfolders (expected ROOT/<class>/<image>)"
                           + ("; its images are directly in it: put each class's images in a subfolder named after "
                              "the class." if loose else (" and it is empty." if not os.listdir(pool) else ".")))
    class_index = {name: i for i, name in enumerate(class_names)}
    skipped: dict[str, int] = {}
    skipped_files = [0]
    keys: list[str] = []
    paths: list[str] = []
    labels: list[int] = []
    split: list[int] = []

    def add_folder(directory: str, names: list[str], key_prefix: str, row_split: int) -> None:
        for name in names:
            class_keys = _class_images(os.path.join(directory, name), name + "/", skipped_files)
            if not class_keys:
                if row_split == SPLIT_TRAIN:
                    raise DatasetError(f"{os.path.join(directory, name)}: class folder with no image (files ending "
                                       f"in {_EXTENSIONS_TEXT}, in any case); add its images or remove the folder.")
                logging.warning("%s: class folder with no image.", os.path.join(directory, name))
            for key in class_keys:
                keys.append(key_prefix + _check_key(key, directory))
                paths.append(os.path.join(directory, key))
            labels.extend([class_index[name]] * len(class_keys))
            split.extend([row_split] * len(class_keys))

    add_folder(pool, class_names, "", SPLIT_TRAIN)
    n_loose = sum(1 for entry in os.scandir(pool) if entry.is_file())
    for clean_name, directory in clean:
        names = class_folders(directory)
        unknown = [name for name in names if name not in class_index]
        if unknown:
            raise DatasetError(f"{os.path.join(directory, unknown[0])}: class {unknown[0]!r} is not a class folder "
                               f"of {pool} ({len(unknown)} such in {directory}).")
        add_folder(directory, names, clean_name + "/", SPLIT_TEST)
        n_loose += sum(1 for entry in os.scandir(directory) if entry.is_file())
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        twice = next(key for key in keys if key in seen or seen.add(key))
        raise DatasetError(f"{root}: two images have the key {twice!r} (a class folder named after a clean folder "
                           f"{CLEAN_FOLDERS}?); rename one.")
    add_skipped(skipped, f"files without an image extension ({_EXTENSIONS_TEXT}) in class folders",
                skipped_files[0])
    add_skipped(skipped, "files directly in the data folders, outside any class folder", n_loose)
    logging.info("%s: %d classes (class subfolders)%s.", pool, len(class_names),
                 "; clean labels in " + ", ".join(path for _, path in clean) if clean else "")
    return make_table(keys, paths, class_names, labels, [UNKNOWN] * len(keys), split, skipped)

"""data.format=auto: which layout a data.root holds, told apart from what is on disk.

In this order: a .tsv or .csv file (tsv, csv); a folder with meta/imagelist.tsv or meta/classes.txt (food101n);
one with the Clothing1M release's category_names_eng.txt or noisy_label_kv.txt, in it or in annotations/
(clothing1m); one with a class subfolder holding an image directly (folder; see data/folder.py, train/ val/
test/ included; images only deeper down need data.format=folder). A folder with both class subfolders and a
.tsv/.csv file is an error (which one is meant?). Only names are looked at, one folder listing per class at
most. Imports `data.clothing1m`, `data.folder`, `data.reading`.
"""

from __future__ import annotations

import os

from cleannet_tf.data.clothing1m import CLOTHING1M_CLASSES, CLOTHING1M_NOISY_KV
from cleannet_tf.data.folder import IMAGE_EXTENSIONS, class_folders, has_image, pool_and_clean_folders
from cleannet_tf.data.reading import DatasetError

__all__ = ["LOOKED_FOR", "detect_format"]

LOOKED_FOR = (f"a .tsv or .csv file (tsv, csv), ROOT/meta/imagelist.tsv (food101n), ROOT/{CLOTHING1M_CLASSES} or "
              f"ROOT/annotations/{CLOTHING1M_NOISY_KV} (clothing1m), or class subfolders with images, "
              "ROOT/<class>/<image> (folder)")



def detect_format(root: str) -> tuple[str, str]:
    """The format of the dataset at `root` and what told it, e.g. ("food101n", "ROOT/meta/imagelist.tsv").

    Raises:
        DatasetError: one line naming `root`, what is wrong with it and what was looked for (LOOKED_FOR).
    """
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.exists(root):
        raise DatasetError(f"data.root {root}: no such file or folder (data.format=auto looks for {LOOKED_FOR}).")
    if not os.path.isdir(root):
        suffix = os.path.splitext(root)[1].lower()
        if suffix in (".tsv", ".csv"):
            return suffix[1:], f"a {suffix} file"
        raise DatasetError(f"data.root {root} is a file but not a .tsv or .csv file (data.format=auto looks for "
                           f"{LOOKED_FOR}); rename it, or set data.format=tsv or csv.")
    for name in ("imagelist.tsv", "classes.txt"):
        if os.path.isfile(os.path.join(root, "meta", name)):
            return "food101n", f"a Food-101N release ({os.path.join(root, 'meta', name)})"
    for folder in (root, os.path.join(root, "annotations")):
        for name in (CLOTHING1M_CLASSES, CLOTHING1M_NOISY_KV):
            if os.path.isfile(os.path.join(folder, name)):
                return "clothing1m", f"a Clothing1M release ({os.path.join(folder, name)})"
    entries = sorted(name for name in os.listdir(root) if not name.startswith("."))
    tables = [name for name in entries if name.lower().endswith((".tsv", ".csv"))
              and os.path.isfile(os.path.join(root, name))]
    pool, clean = pool_and_clean_folders(root)
    classes = class_folders(pool)
    with_images = next((name for name in classes if has_image(os.path.join(pool, name))), None)
    if with_images is not None and tables:
        raise DatasetError(f"data.root {root} holds both class subfolders of images and {tables[0]}: set data.root "
                           f"to {os.path.join(root, tables[0])} (its rows), or data.format=folder (the subfolders).")
    if with_images is not None:
        clean_text = "; clean labels in " + ", ".join(path for _, path in clean) if clean else ""
        return "folder", (f"class subfolders of images ({len(classes)} in {pool}, e.g. "
                          f"{os.path.join(pool, with_images)}{clean_text})")
    if not entries:
        raise DatasetError(f"data.root {root} is an empty folder (data.format=auto looks for {LOOKED_FOR}).")
    if tables:
        hint = f"; it holds {tables[0]}: set data.root to that file"
    elif classes:
        hint = (f"; its subfolders {classes[:3]} hold no image directly (files ending in {' '.join(IMAGE_EXTENSIONS)})"
                ": set data.format=folder if they hold images deeper down")
    elif has_image(root):
        hint = "; its images are directly in it: put each class's images in a subfolder named after the class"
    else:
        hint = ""
    raise DatasetError(f"data.root {root}: no dataset layout found (data.format=auto looks for {LOOKED_FOR}){hint}.")

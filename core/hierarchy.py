"""The class tree that links the heads of one run, from the coarsest head to the finest.

Heads are ordered by class count, and heads with the same count keep their
order in labels.csv. Each class of a finer head is linked to the class of the
previous (coarser) head that contains most of its images. This parent class is
the class's *majority parent*, and the *share* is the fraction of the class's
images that it contains. A share of 1.0 means that the finer head splits the
coarser class cleanly. A share near ``1 / num_coarse_classes`` means that the
class's images are spread over the coarser classes.

Empty classes have no images and so no parent, and they are left out of the
tree. When two coarse classes hold the same number of a fine class's images,
the one with the lower index is the parent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

PATH_SEPARATOR = "/"


def validate_assignments(classes: np.ndarray, head_names: Sequence[str], class_counts: Sequence[int]) -> np.ndarray:
    """Check the class assignments of all heads and return them as an int64 array.

    Args:
        classes: (num_images, num_heads) integer class index of each image per head.
        head_names: name of each head, such as ``k10``, in column order.
        class_counts: number of classes of each head, in column order.

    Raises:
        ValueError: if ``classes`` is not a 2-D integer array with at least one
            image, the names or counts do not match its columns, a name repeats,
            a count is below 1, or a class is outside ``[0, count)``.
    """
    classes = np.asarray(classes)
    if classes.ndim != 2 or classes.shape[0] == 0 or classes.shape[1] == 0:
        raise ValueError(
            f"classes has shape {classes.shape}: pass a (num_images, num_heads) array "
            "with at least one image and one head."
        )
    if not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"classes has dtype {classes.dtype}: pass an integer array of class indices.")

    num_heads = classes.shape[1]
    if len(head_names) != num_heads or len(class_counts) != num_heads:
        raise ValueError(
            f"classes has {num_heads} columns, but head_names has length {len(head_names)} and "
            f"class_counts has length {len(class_counts)}: pass one name and one count per head."
        )
    if len(set(head_names)) != num_heads:
        raise ValueError(f"head_names {list(head_names)} contains a name twice: give each head its own name.")

    for h, (name, count) in enumerate(zip(head_names, class_counts, strict=True)):
        if int(count) < 1:
            raise ValueError(f"head {name} has class count {count}: every head needs at least 1 class.")
        column = classes[:, h]
        bad = np.flatnonzero((column < 0) | (column >= count))
        if bad.size:
            raise ValueError(
                f"class {column[bad[0]]} of image {bad[0]} in head {name} is outside [0, {count}): "
                "pass class indices below the head's class count."
            )
    return classes.astype(np.int64, copy=False)


def coarse_to_fine_order(class_counts: Sequence[int]) -> list[int]:
    """Return the head indices sorted by class count, keeping column order for equal counts."""
    return sorted(range(len(class_counts)), key=lambda h: (int(class_counts[h]), h))


def contingency_table(
    fine: np.ndarray, coarse: np.ndarray, num_fine_classes: int, num_coarse_classes: int
) -> np.ndarray:
    """Count the images of each (fine class, coarse class) pair.

    Args:
        fine: (num_images,) class index of each image in the finer head.
        coarse: (num_images,) class index of each image in the coarser head.

    Returns:
        (num_fine_classes, num_coarse_classes) int64 counts. Empty classes get
        rows or columns of zeros, so row ``i`` is always fine class ``i``.
    """
    pair_index = np.asarray(fine, dtype=np.int64) * num_coarse_classes + np.asarray(coarse, dtype=np.int64)
    counts = np.bincount(pair_index, minlength=num_fine_classes * num_coarse_classes)
    return counts.reshape(num_fine_classes, num_coarse_classes)


def class_tree(classes: np.ndarray, head_names: Sequence[str], class_counts: Sequence[int]) -> dict[str, Any]:
    """Link each class of every head to its majority parent in the next coarser head.

    Args:
        classes: (num_images, num_heads) integer class index of each image per head.
        head_names: name of each head, such as ``k10``, in column order.
        class_counts: number of classes of each head, in column order.

    Returns:
        A JSON-serialisable dict:

        * ``heads``: head names from coarse to fine.
        * ``num_images``: number of images.
        * ``roots``: ``[{"class", "size"}]`` for the non-empty classes of the
          coarsest head.
        * ``links``: for every other head, by name, ``{"parent_head", "classes"}``,
          where ``classes`` lists ``{"class", "size", "parent", "share"}`` for
          each non-empty class, sorted by class.

    Raises:
        ValueError: as :func:`validate_assignments`.
    """
    classes = validate_assignments(classes, head_names, class_counts)
    order = coarse_to_fine_order(class_counts)
    root = order[0]
    root_sizes = np.bincount(classes[:, root], minlength=int(class_counts[root]))

    links = {}
    for coarse, fine in zip(order[:-1], order[1:], strict=True):
        table = contingency_table(
            classes[:, fine], classes[:, coarse], int(class_counts[fine]), int(class_counts[coarse])
        )
        links[head_names[fine]] = {"parent_head": head_names[coarse], "classes": _majority_parents(table)}

    return {
        "heads": [head_names[h] for h in order],
        "num_images": int(classes.shape[0]),
        "roots": [{"class": int(c), "size": int(root_sizes[c])} for c in np.flatnonzero(root_sizes)],
        "links": links,
    }


def _majority_parents(table: np.ndarray) -> list[dict[str, Any]]:
    """List the majority parent and its share for each non-empty row of a contingency table."""
    sizes = table.sum(axis=1)
    parents = table.argmax(axis=1)
    return [
        {
            "class": int(c),
            "size": int(sizes[c]),
            "parent": int(parents[c]),
            "share": float(table[c, parents[c]] / sizes[c]),
        }
        for c in np.flatnonzero(sizes)
    ]


def tree_path_column(tree: dict[str, Any], classes: np.ndarray, head_names: Sequence[str]) -> list[str]:
    """Build one text cell per image that follows the tree from the image's finest class to the root.

    The cell lists the heads from coarse to fine as ``name=class`` joined by
    ``/``, such as ``k5=1/k10=3/k20=12``. Only the finest class is the image's
    own. Each coarser class is the majority parent of the class after it, so it
    can differ from the image's own class in that head's column of labels.csv.
    The cells can be passed to ``write_labels_csv`` as an extra column.

    Args:
        tree: the output of :func:`class_tree` for the same ``classes``.
        classes: (num_images, num_heads) integer class index of each image per head.
        head_names: name of each head, in column order.

    Raises:
        ValueError: if ``tree`` does not match ``classes`` and ``head_names``.
    """
    classes = np.asarray(classes)
    ordered_heads = tree["heads"]
    if sorted(ordered_heads) != sorted(head_names) or classes.shape != (tree["num_images"], len(head_names)):
        raise ValueError(
            f"the tree has heads {ordered_heads} and {tree['num_images']} images, but classes has shape "
            f"{classes.shape} for heads {list(head_names)}: build the tree from the same classes."
        )

    parent_of = {
        name: {link["class"]: link["parent"] for link in tree["links"][name]["classes"]} for name in ordered_heads[1:]
    }
    finest = list(head_names).index(ordered_heads[-1])
    cells = []
    for fine_class in classes[:, finest]:
        path = [int(fine_class)]
        for name in reversed(ordered_heads[1:]):
            path.append(parent_of[name][path[-1]])
        path.reverse()
        cells.append(PATH_SEPARATOR.join(f"{name}={c}" for name, c in zip(ordered_heads, path, strict=True)))
    return cells

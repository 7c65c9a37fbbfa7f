"""The images an annotator may open: one record per image, looked up by its safe id.

An image id on the page is the sample's ``safe_id`` (``<class>__<stem>``,
:func:`~laplace_head.dataset.scan.make_safe_id`). The catalog is built once, from the project's
split manifests or by scanning a folder of new images (``<root>/<class>/<stem>.{jpg,jpeg,png}``,
no masks), and an id resolves only to a file listed there whose real path lies inside the images
root. A request never builds a path from the id itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from laplace_head.dataset.scan import (
    IMAGE_EXTENSIONS,
    make_safe_id,
    make_sample_id,
    name_problem,
    safe_id_problem,
)
from laplace_head.errors import LaplaceHeadError
from laplace_head.layout import SPLITS, ProjectLayout

#: The split of an image found by scanning ``--images DIR`` (not in any manifest).
NEW_IMAGES_SPLIT = "new"


class AnnotateRequestError(LaplaceHeadError):
    """A request the annotator refuses: ``status`` is the HTTP status, the message the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class ImageRecord:
    """One image of the catalog.

    Attributes
    ----------
    image_id
        The sample's safe id ``<class>__<stem>``: the id the page uses.
    class_name, stem
        The nested names: ``<images root>/<class>/<stem>.<ext>``.
    split
        ``train`` / ``val`` / ``test`` from the manifests, or ``new`` for ``--images DIR``.
    image_path
        The image file as listed (manifest path or scanned path).
    """

    image_id: str
    class_name: str
    stem: str
    split: str
    image_path: Path

    @property
    def sample_id(self) -> str:
        """``<class>/<stem>``, the id of the manifests."""
        return make_sample_id(self.class_name, self.stem)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


class ImageCatalog:
    """The images of one annotator, by id, and the root their files must lie in.

    Parameters
    ----------
    images_root
        The folder every image must resolve into (symlinks are followed first).
    records
        The images; an image whose real path lies outside ``images_root`` is kept as refused
        (its id answers 403 with the reason), not listed.
    """

    def __init__(self, images_root: str | os.PathLike, records: list[ImageRecord]) -> None:
        self.images_root = Path(images_root)
        self._root_real = Path(os.path.realpath(self.images_root))
        self._records: dict[str, ImageRecord] = {}
        self._refused: dict[str, str] = {}
        for record in sorted(records, key=lambda r: (r.class_name, r.stem)):
            real = Path(os.path.realpath(record.image_path))
            if not _inside(real, self._root_real):
                self._refused[record.image_id] = (
                    f"image {record.sample_id!r} resolves to {str(real)!r}, outside the images "
                    f"root {str(self._root_real)!r} (a symlink out of the root); it is not served"
                )
            else:
                self._records[record.image_id] = record

    @classmethod
    def from_manifests(cls, layout: ProjectLayout, images_root: str | os.PathLike) -> ImageCatalog:
        """Every image of the project's train/val/test manifests (stage 1's output)."""
        from laplace_head.dataset.manifests import read_split_manifest

        records = []
        for split in SPLITS:
            frame = read_split_manifest(layout.manifest(split))
            for row in frame.to_dict("records"):
                records.append(
                    ImageRecord(
                        row["safe_id"], row["class"], row["stem"], split, Path(row["image_path"])
                    )
                )
        return cls(images_root, records)

    @classmethod
    def from_folder(cls, images_root: str | os.PathLike) -> ImageCatalog:
        """Every image file of ``images_root/<class>/<stem>.{jpg,jpeg,png}`` (no masks needed);
        a name :func:`~laplace_head.dataset.scan.safe_id_problem` refuses is left out."""
        root = Path(images_root)
        if not root.is_dir():
            raise LaplaceHeadError(
                f"--images {str(root)!r} is not a folder; give a folder of "
                "<class>/<stem>.{jpg,jpeg,png} images"
            )
        records = []
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for path in sorted(class_dir.iterdir()):
                if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
                    continue
                safe_id = make_safe_id(class_dir.name, path.stem)
                if name_problem(class_dir.name) or name_problem(path.stem):
                    continue
                if safe_id_problem(safe_id):
                    continue
                records.append(
                    ImageRecord(safe_id, class_dir.name, path.stem, NEW_IMAGES_SPLIT, path)
                )
        if not records:
            raise LaplaceHeadError(
                f"--images {str(root)!r} holds no usable <class>/<stem>.{{jpg,jpeg,png}} image"
            )
        return cls(root, records)

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> list[ImageRecord]:
        """The served images, sorted by class, then stem."""
        return list(self._records.values())

    def classes(self) -> list[str]:
        """The classes of the served images, sorted."""
        return sorted({record.class_name for record in self._records.values()})

    def resolve(self, image_id: object) -> ImageRecord:
        """The record of ``image_id``, checked again on disk.

        Raises
        ------
        AnnotateRequestError
            400 for an id that is no safe id (``..``, an absolute path, a separator, control
            characters), 403 for an image that resolves outside the images root (a symlink
            out), 404 for an unknown id or a file that is gone.
        """
        problem = safe_id_problem(image_id)
        if problem:
            raise AnnotateRequestError(
                400,
                f"image id {image_id!r} {problem}: an id is one <class>__<stem> name from the "
                "image list",
            )
        if image_id in self._refused:
            raise AnnotateRequestError(403, self._refused[image_id])
        record = self._records.get(image_id)  # type: ignore[arg-type]
        if record is None:
            raise AnnotateRequestError(
                404, f"unknown image id {image_id!r}: not in this annotator's image list"
            )
        real = Path(os.path.realpath(record.image_path))
        if not _inside(real, self._root_real):
            raise AnnotateRequestError(
                403,
                f"image {record.sample_id!r} now resolves to {str(real)!r}, outside the images "
                f"root {str(self._root_real)!r}",
            )
        if not real.is_file():
            raise AnnotateRequestError(404, f"image file {str(real)!r} is gone")
        return record

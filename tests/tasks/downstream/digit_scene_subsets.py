"""Small subsets of the bundled digit scenes, written in the layouts the real loaders read, so end-to-end
fine-tuning tests run the real datasets in seconds."""

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

from vitkd.downstream.data import DIGIT_SCENES, DigitScenesPaths, dataset_paths


@functools.lru_cache(maxsize=None)
def written_digit_scenes() -> DigitScenesPaths:
    """The digit scenes, written once per test session into a temporary folder (removed at exit)."""
    folder = tempfile.mkdtemp(prefix="vitkd-digit-scenes-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return dataset_paths(DIGIT_SCENES, data_dir=folder)


def coco_subset(paths: DigitScenesPaths, out: Path, counts: dict[str, int]) -> dict[str, str]:
    """Instances files holding the first `counts[split]` scenes of each split (images stay where they are);
    returns the `downstream.data` keys of a `coco` recipe."""
    keys = {"root": str(out)}
    for split, count in counts.items():
        instances = json.loads(paths.coco_annotations(split).read_text())
        images = instances["images"][:count]
        kept = {image["id"] for image in images}
        instances.update(images=images, annotations=[a for a in instances["annotations"] if a["image_id"] in kept])
        (out / f"{split}.json").write_text(json.dumps(instances))
        keys[f"{split}_images"] = str(paths.coco_images(split))
        keys[f"{split}_annotations"] = f"{split}.json"
    return keys


def semantic_subset(paths: DigitScenesPaths, out: Path, counts: dict[str, int]) -> dict[str, str]:
    """An ADE20K-style folder linking the first `counts[split]` scenes of each split; returns the `downstream.data`
    keys of a `semantic_folder` recipe."""
    for split, count in counts.items():
        for kind, suffix in (("images", ".png"), ("annotations", ".png")):
            folder = out / kind / split
            folder.mkdir(parents=True)
            for source in sorted((paths.semantic_root / kind / split).glob(f"*{suffix}"))[:count]:
                (folder / source.name).symlink_to(source)
    return {"root": str(out), "train_split": "train", "val_split": "val"}

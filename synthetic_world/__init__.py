"""Synthetic aerial scenes for demos and tests: data tooling beside the runtime package.

``scenes`` paints object scenes for the instance splits, ``landcover`` land-cover scenes
(every pixel labelled) for the semantic splits.

``import score`` does not load this package; the dataset writer
(``tools/make_synthetic_datasets.py``), the tiny-world CLIP pretraining
(``tools/pretrain_tiny_clip.py``) and the tests import it.
"""

from .scenes import (  # noqa: F401
    CONCEPTS,
    SCENE_TYPES,
    Recipe,
    Scene,
    SceneType,
    draw_object,
    draw_surround,
    recipe_for,
    render_image,
    render_scene,
    scene_types_of,
    surround_radius,
    write_split,
    write_synthetic_datasets,
)

"""Prediction with a trained SCORE model: single images, and scenes far larger than the model's input.

Not imported by ``import score`` (training and evaluation do not need it, nor
rasterio): ``from score.predict.predictor import SCOREPredictor``.

    predictor.py   SCOREPredictor, COCO annotations and overlays of instances
    windows.py     the window grid of a scene and readers of its windows
    masks.py       instances as boxes and bit-packed crops, their COCO RLE
    merge.py       TileMerger (pieces of objects cut by tile borders), tiled_inference
    spill.py       merged objects kept as pieces in a file
    scene.py       the scene engine: rows, checkpoints, resume; the SceneSink interface
    instances.py   InstanceSink: the instance task of the engine (COCO lines, GeoJSON, overlay)
    sharding.py    the rows of a scene shared out over processes
    geotiff.py     GeoTiffReader (rasterio)
    geojson.py     GeoJSON Features and collections (rasterio)

Only ``geotiff.py`` and ``geojson.py`` (and ``instances.py``, which writes
GeoJSON) import rasterio.
"""

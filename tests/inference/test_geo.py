"""GeoTIFF windows and GeoJSON detections: pixel corners through the affine transform, CRS, areas."""

import score  # noqa: F401, I001  (first: its shims let detectron2 import without detectron2._C)
import json

import numpy as np
import pytest
import rasterio
import rasterio.features
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import from_origin

from score.predict.geojson import (
    FeatureMaker,
    crs_member,
    instance_geometry,
    instances_to_geojson,
    write_geojson,
)
from score.predict.geotiff import GeoTiffReader
from score.predict.masks import SceneInstance

UTM33 = CRS.from_epsg(32633)


def square(x0, y0, side, category=0, confidence=0.9):
    mask = np.ones((side, side), dtype=bool)
    return SceneInstance(category, confidence, (x0, y0, x0 + side, y0 + side), mask)


def write_tiff(path, data, *, crs=UTM33, transform=None, nodata=None):
    count, height, width = data.shape
    transform = transform or from_origin(500_000.0, 5_000_000.0, 0.5, 0.5)
    profile = dict(driver="GTiff", height=height, width=width, count=count, dtype=data.dtype)
    profile["transform"] = transform
    if crs is not None:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return str(path)


def test_square_mask_maps_to_pixel_corners_through_the_transform():
    transform = Affine(2.0, 0.0, 1000.0, 0.0, -3.0, 5000.0)  # 2 units wide, 3 high, north up
    geometry = instance_geometry(square(20, 10, 5), transform)
    assert geometry["type"] == "Polygon"
    ring = geometry["coordinates"][0]
    # Pixel columns 20..24 span x = 1000 + 2 * [20, 25]; rows 10..14 span y = 5000 - 3 * [10, 15].
    assert set(ring) == {(1040.0, 4970.0), (1050.0, 4970.0), (1050.0, 4955.0), (1040.0, 4955.0)}
    assert ring[0] == ring[-1] and len(ring) == 5


def test_rotated_transform_is_applied_to_corners():
    transform = Affine.translation(10, 20) @ Affine.rotation(90) @ Affine.scale(2)
    ring = instance_geometry(square(0, 0, 1), transform)["coordinates"][0]
    expected = {transform @ (0, 0), transform @ (1, 0), transform @ (1, 1), transform @ (0, 1)}
    assert {(round(x, 9), round(y, 9)) for x, y in ring} == {(round(x, 9), round(y, 9)) for x, y in expected}


def test_holes_and_separate_parts():
    mask = np.ones((5, 5), dtype=bool)
    mask[2, 2] = False
    ring_geometry = instance_geometry(SceneInstance(0, 1.0, (0, 0, 5, 5), mask), Affine.identity())
    assert ring_geometry["type"] == "Polygon" and len(ring_geometry["coordinates"]) == 2
    assert set(ring_geometry["coordinates"][1]) == {(2.0, 2.0), (3.0, 2.0), (3.0, 3.0), (2.0, 3.0)}

    parts = np.zeros((3, 7), dtype=bool)
    parts[:, :2] = parts[:, 5:] = True
    multi = instance_geometry(SceneInstance(0, 1.0, (0, 0, 7, 3), parts), Affine.identity())
    assert multi["type"] == "MultiPolygon" and len(multi["coordinates"]) == 2


def test_feature_collection_properties_crs_and_area(tmp_path):
    transform = from_origin(500_000.0, 5_000_000.0, 0.5, 0.5)
    instances = [square(0, 0, 4, category=1, confidence=0.75)]
    collection = instances_to_geojson(instances, ["ship", "storage tank"], transform=transform, crs=UTM33)
    assert collection["crs"] == {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}
    (feature,) = collection["features"]
    assert feature["properties"] == {
        "class": "storage tank",
        "category_id": 2,
        "score": 0.75,
        "area_px": 16,
        "area_crs": 16 * 0.25,
    }
    path = tmp_path / "out" / "scene.geojson"
    write_geojson(str(path), collection)
    assert json.loads(path.read_text())["features"][0]["geometry"]["type"] == "Polygon"

    geographic = instances_to_geojson(
        [square(0, 0, 4)], ["ship"], transform=from_origin(10.0, 50.0, 1e-5, 1e-5), crs=CRS.from_epsg(4326)
    )
    assert geographic["features"][0]["properties"]["area_crs"] is None


def test_wgs84_output_drops_the_crs_member_and_reprojects():
    transform = from_origin(500_000.0, 5_000_000.0, 10.0, 10.0)
    instances = [square(0, 0, 1)]
    collection = instances_to_geojson(instances, ["ship"], transform=transform, crs=UTM33, to_wgs84=True)
    assert "crs" not in collection
    lon, lat = collection["features"][0]["geometry"]["coordinates"][0][0]
    expected_lon, expected_lat = rasterio.warp.transform(UTM33, "EPSG:4326", [500_000.0], [5_000_000.0])
    assert lon == pytest.approx(expected_lon[0]) and lat == pytest.approx(expected_lat[0])
    assert 14.9 < lon < 15.1 and 45.0 < lat < 45.2  # UTM 33N's central meridian is 15 E
    with pytest.raises(ValueError, match="no CRS"):
        instances_to_geojson([], ["ship"], transform=transform, crs=None, to_wgs84=True)


@pytest.mark.parametrize("to_wgs84", [False, True])
def test_feature_json_in_pieces_equals_the_feature(to_wgs84):
    transform = from_origin(500_000.0, 5_000_000.0, 10.0, 10.0)
    maker = FeatureMaker(["ship", "tank"], transform=transform, crs=UTM33, to_wgs84=to_wgs84)
    rng = np.random.default_rng(0)
    ragged = rng.random((30, 41)) > 0.5  # many parts with holes: a MultiPolygon
    ragged[0, :] = ragged[-1, :] = ragged[:, 0] = ragged[:, -1] = True
    for inst in (square(3, 4, 5, category=1), SceneInstance(0, 0.5, (7, 9, 48, 39), ragged)):
        feature = maker.feature(inst)
        assert "".join(maker.feature_json(inst)) == json.dumps(feature)
        # Parts reprojected one by one are the whole geometry reprojected (what was written before).
        whole = instance_geometry(inst, transform)
        if to_wgs84:
            whole = rasterio.warp.transform_geom(UTM33, "EPSG:4326", whole)
        assert json.dumps(feature["geometry"]) == json.dumps(whole)
    assert feature["geometry"]["type"] == "MultiPolygon"
    empty = SceneInstance(0, 0.5, (0, 0, 3, 2), np.zeros((2, 3), dtype=bool))
    assert maker.feature(empty) is None and list(maker.feature_json(empty)) == []


def test_crs_member_without_epsg_uses_wkt():
    crs = CRS.from_proj4("+proj=tmerc +lat_0=0 +lon_0=13.3 +k=0.9996 +x_0=500000 +ellps=GRS80 +units=m")
    assert crs_member(crs)["properties"]["name"].startswith(("PROJCS", "PROJCRS"))


def test_reader_windows_bands_and_uint8(tmp_path):
    # GDAL writes four uint8 bands as RGBA: band 4 is an alpha band, 0 would mark no data.
    data = np.random.default_rng(0).integers(1, 256, size=(4, 40, 60), dtype=np.uint8)
    with GeoTiffReader(write_tiff(tmp_path / "a.tif", data)) as reader:
        assert (reader.height, reader.width) == (40, 60) and reader.georeferenced
        window = reader.read((10, 5, 30, 25))
        assert window.shape == (20, 20, 3) and window.dtype == np.uint8
        np.testing.assert_array_equal(window, data[:3, 5:25, 10:30].transpose(1, 2, 0))
    with GeoTiffReader(write_tiff(tmp_path / "a.tif", data), bands=(4, 3, 2)) as reader:
        np.testing.assert_array_equal(reader.read((0, 0, 60, 40)), data[[3, 2, 1]].transpose(1, 2, 0))


def test_reader_single_band_and_errors(tmp_path):
    gray = np.arange(20 * 30, dtype=np.uint8).reshape(1, 20, 30)
    with GeoTiffReader(write_tiff(tmp_path / "gray.tif", gray, crs=None)) as reader:
        assert not reader.georeferenced
        np.testing.assert_array_equal(reader.read((0, 0, 30, 20)), np.repeat(gray[0][..., None], 3, axis=2))
    two = np.zeros((2, 10, 10), dtype=np.uint8)
    with pytest.raises(ValueError, match="2 bands"):
        GeoTiffReader(write_tiff(tmp_path / "two.tif", two))
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 definitely not a tiff")
    with pytest.raises(OSError, match="broken.tif"):
        GeoTiffReader(str(broken))


def test_uint16_scaling_by_dtype_range_and_percentiles(tmp_path):
    data = np.zeros((3, 10, 100), dtype=np.uint16)
    data[:] = np.linspace(0, 4095, 100, dtype=np.uint16)  # 12-bit values, a ramp along x
    path = write_tiff(tmp_path / "u16.tif", data)
    with GeoTiffReader(path, scaling="dtype") as reader:
        image = reader.read((0, 0, 100, 10))
        np.testing.assert_array_equal(image[0, :, 0], np.rint(data[0, 0] * 255.0 / 65535).astype(np.uint8))
        assert image.max() == 16  # 4095 of 65535: dark, which is why percentiles are the default
    with GeoTiffReader(path) as reader:
        image = reader.read((0, 0, 100, 10))
        low, high = np.percentile(data[0], [2, 98])
        expected = np.clip(np.rint((data[0, 0].astype(np.float32) - low) * (255.0 / (high - low))), 0, 255)
        np.testing.assert_allclose(image[0, :, 0], expected, atol=1)
        assert image.min() == 0 and image.max() == 255
    with pytest.raises(ValueError, match="scaling"):
        GeoTiffReader(path, scaling="minmax")


def test_preview_is_decimated(tmp_path):
    data = np.full((3, 300, 200), 7, dtype=np.uint8)
    with GeoTiffReader(write_tiff(tmp_path / "p.tif", data)) as reader:
        preview, scale = reader.read_preview(150)
    assert preview.shape == (150, 100, 3) and scale == pytest.approx(0.5)
    assert (preview == 7).all()


def ragged(height, width, x0=3, y0=5, seed=0):
    """A ragged instance (noise above a threshold: many parts, holes) at (x0, y0)."""
    mask = np.random.default_rng(seed).random((height, width)) < 0.55
    mask[0, 0] = mask[-1, -1] = True  # the box is tight
    return SceneInstance(0, 0.5, (x0, y0, x0 + width, y0 + height), mask)


def rasterized(geometry, transform, shape):
    """The pixels a geometry covers (pixel centres inside), as rasterio burns it."""
    parts = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
    shapes = [({"type": "Polygon", "coordinates": p}, 1) for p in parts]
    return rasterio.features.rasterize(shapes, out_shape=shape, transform=transform, dtype=np.uint8) > 0


@pytest.mark.parametrize("band_pixels", [53, 300, 37 * 53 - 1])
def test_outline_in_bands_covers_exactly_the_mask(band_pixels):
    transform = Affine(2.0, 0.0, 1000.0, 0.0, -3.0, 5000.0)
    inst = ragged(37, 53)
    shape = (50, 60)
    whole = instance_geometry(inst, transform)
    banded = instance_geometry(inst, transform, band_pixels=band_pixels)
    assert banded != whole and banded["type"] == "MultiPolygon"
    expected = inst.to_full_mask(*shape)
    assert np.array_equal(rasterized(whole, transform, shape), expected)
    assert np.array_equal(rasterized(banded, transform, shape), expected)
    # Every polygon lies in one band of band_pixels // 53 rows (y = 5000 - 3 * row).
    rows = max(1, band_pixels // 53)
    for polygon in banded["coordinates"]:
        top = {int((5000 - y) / 3) - 5 for _, y in polygon[0]}
        assert max(top) - min(top) <= rows and min(top) // rows == (max(top) - 1) // rows


def test_outline_in_bands_only_above_band_pixels_and_written_in_pieces():
    inst = ragged(37, 53)
    maker = FeatureMaker(["thing"], transform=Affine.identity(), crs=None, band_pixels=37 * 53)
    assert maker.feature(inst)["geometry"] == instance_geometry(inst, Affine.identity())  # not above
    maker = FeatureMaker(["thing"], transform=Affine.identity(), crs=None, band_pixels=400)
    feature = maker.feature(inst)
    assert feature["geometry"] == instance_geometry(inst, Affine.identity(), band_pixels=400)
    assert json.loads("".join(maker.feature_json(inst))) == json.loads(json.dumps(feature))

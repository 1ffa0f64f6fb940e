"""COCO-format data: what bad input becomes (one line, or skipped and reported), and COCO's own conventions."""

import json

import pytest

from convnext.cli import main
from convnext.errors import UserError
from convnext.tasks.detection.data import CocoData, find_coco
from convnext.tasks.detection.demo import make_demo_set


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory):
    return make_demo_set(tmp_path_factory.mktemp("coco") / "set", "train", 6, size=64, seed=1)


def _edited(coco_set, tmp_path, edit):
    """A copy of the set's json, changed by ``edit``, beside the same images."""
    data = json.loads((coco_set / "instances_train.json").read_text())
    edit(data)
    path = tmp_path / "instances_bad.json"
    (tmp_path / "images").symlink_to(coco_set / "images")
    path.write_text(json.dumps(data))
    return path


def _annotation(image_id, box, category_id=0, ann_id=1000, **extra):
    return {**dict(id=ann_id, image_id=image_id, category_id=category_id, bbox=box, iscrowd=0), **extra}


def test_a_clean_set_reads_with_labels_from_one(coco_set):
    data = CocoData(coco_set, train=False)
    assert data.classes == ["0", "1", "4"] and data.report.lines() == []
    image, target = data.load(0)
    assert target["boxes"].shape[1] == 4 and target["masks"].shape[1:] == (64, 64)
    assert set(target["labels"].tolist()) <= {1, 2, 3}


def test_boxes_are_clipped_and_empty_ones_dropped(coco_set, tmp_path):
    def edit(data):
        data["annotations"] += [_annotation(1, [-10, -5, 30, 30], ann_id=1001),  # reaches outside: clipped
                                _annotation(1, [10, 10, 0, 5], ann_id=1002),  # zero width: dropped
                                _annotation(1, [70, 70, 10, 10], ann_id=1003)]  # wholly outside: dropped

    data = CocoData(_edited(coco_set, tmp_path, edit), train=True)
    lines = " | ".join(data.notes())
    assert "1 boxes reached outside" in lines and "2 boxes of no area" in lines
    boxes = [a["bbox"] for a in data.coco.dataset["annotations"] if a["id"] == 1001]
    assert boxes == [[0, 0, 20, 25]]


def test_unknown_categories_and_images_are_dropped_and_named(coco_set, tmp_path):
    def edit(data):
        data["annotations"] += [_annotation(1, [1, 1, 9, 9], category_id=77, ann_id=1001),
                                _annotation(999, [1, 1, 9, 9], ann_id=1002)]

    data = CocoData(_edited(coco_set, tmp_path, edit), train=True)
    lines = " | ".join(data.notes())
    assert "categories the json does not list" in lines and "77" in lines
    assert "images the json does not list" in lines
    assert {a["id"] for a in data.coco.dataset["annotations"]}.isdisjoint({1001, 1002})


def test_missing_image_files_are_left_out_and_reported(coco_set, tmp_path):
    def edit(data):
        data["images"].append(dict(id=50, file_name="gone.jpg", width=64, height=64))
        data["annotations"].append(_annotation(50, [1, 1, 9, 9], ann_id=1001))

    data = CocoData(_edited(coco_set, tmp_path, edit), train=False)
    assert 50 not in data.ids and "1 image files missing" in " | ".join(data.notes())


def test_crowd_regions_and_empty_images_follow_coco(coco_set, tmp_path):
    def edit(data):
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 2]
        data["annotations"].append(_annotation(2, [1, 1, 20, 20], ann_id=1001, iscrowd=1))

    path = _edited(coco_set, tmp_path, edit)
    train, val = CocoData(path, train=True), CocoData(path, train=False)
    assert 2 not in train.ids and 2 in val.ids  # no training target left, kept for evaluation
    assert len(val.load(val.ids.index(2))[1]["boxes"]) == 0  # a crowd region is no target


@pytest.mark.parametrize("text, message", [("{not json", "not valid json"), ("[]", "not a COCO annotation file"),
                                           ('{"images": [], "categories": []}', "no 'categories'"),
                                           ('{"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}]}',
                                            "images\\[0\\] has no file_name")])
def test_a_broken_json_is_one_line(tmp_path, text, message):
    (tmp_path / "images").mkdir()
    (tmp_path / "instances_x.json").write_text(text)
    with pytest.raises(UserError, match=message):
        CocoData(tmp_path, train=True)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["images"].append(dict(d["images"][0])), r"1 images id\(s\) listed more than once, e.g. id 1"),
    (lambda d: d["categories"].append(dict(d["categories"][0], name="twin")), "categories id.* more than once"),
    (lambda d: d["images"][1].update(width="64"), r"images\[1\] width '64' is not a whole number of pixels"),
    (lambda d: d["images"][0].update(file_name="../../etc/passwd"), "1 image file_name.* point outside its images"),
    (lambda d: d["annotations"].append(dict(d["annotations"][0])), "annotations id.* listed more than once"),
    (lambda d: [a.update(category_id=[1]) for a in d["annotations"]],
     r"annotations\[0\] category_id \[1\] is not an integer \(and \d+ more annotations like it\)"),
])
def test_a_malformed_coco_json_is_one_line_naming_the_first_problem(coco_set, tmp_path, edit, message):
    """Issue 21: repeated ids gave one image's annotations to another (or lost a class), wrong types crashed."""
    with pytest.raises(UserError, match=message):
        CocoData(_edited(coco_set, tmp_path, edit), train=True)


def test_bad_single_annotations_are_dropped_and_counted(coco_set, tmp_path):
    def edit(data):
        data["annotations"] += [_annotation(1, [float("nan"), 1, 9, 9], ann_id=1001),
                                _annotation(1, [1, 1, 9, 9], ann_id=1002, segmentation={"size": [32, 32],
                                                                                        "counts": "abc"}),
                                _annotation(1, [1, 1, 9, 9], ann_id=1003, segmentation="a polygon?"),
                                _annotation(1, [1, 1, 9, 9], ann_id=1004, segmentation=[[1, 2, 3]]),
                                _annotation(1, [1, 1, 9, 9], ann_id=1005, iscrowd="yes")]

    data = CocoData(_edited(coco_set, tmp_path, edit), train=True)
    lines = " | ".join(data.notes())
    assert "1 boxes of no area (or no box, or not finite numbers)" in lines
    assert "4 annotations whose mask is neither polygons (3+ points) nor an RLE" in lines
    assert {a["id"] for a in data.coco.dataset["annotations"]}.isdisjoint({1001, 1002, 1003, 1004, 1005})


def test_an_area_that_is_no_finite_number_becomes_the_box_area_and_is_counted(coco_set, tmp_path):
    """Issue 21: an area of Infinity (json allows it) put an object outside every COCOeval size range."""
    def edit(data):
        data["annotations"] += [_annotation(1, [1, 1, 9, 9], ann_id=1001, area=float("inf")),
                                _annotation(1, [1, 1, 8, 8], ann_id=1002, area="big"),
                                _annotation(1, [1, 1, 7, 7], ann_id=1003, area=-5),
                                _annotation(1, [1, 1, 6, 6], ann_id=1004, area=30.5),
                                _annotation(1, [1, 1, 5, 5], ann_id=1005)]

    data = CocoData(_edited(coco_set, tmp_path, edit), train=True)
    areas = {a["id"]: a["area"] for a in data.coco.dataset["annotations"] if a["id"] > 1000}
    assert areas == {1001: 81, 1002: 64, 1003: 49, 1004: 30.5, 1005: 25}
    assert any("3 annotations whose area is no finite number" in line for line in data.notes())


def test_a_set_whose_every_annotation_is_dropped_says_why(coco_set, tmp_path):
    def edit(data):
        for ann in data["annotations"]:
            ann["bbox"] = [1, 2]

    with pytest.raises(UserError, match=r"no image has an annotation to train on \(\d+ boxes of no area"):
        CocoData(_edited(coco_set, tmp_path, edit), train=True)


def test_the_cli_says_one_line_for_a_broken_json(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "instances_x.json").write_text("{oops")
    assert main(["detect", "train", "--data", str(tmp_path), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not valid json" in err[0]


def test_a_folder_needs_one_json_and_images(tmp_path):
    with pytest.raises(UserError, match="no instances"):
        find_coco(tmp_path)


def test_the_cli_refuses_bad_settings_in_one_line(tmp_path, capsys):
    for argv, message in ((["--model", "convnext_tiny"], "a detector is needed"),
                          (["--set", "lr_steps=[30, 40]", "--epochs", "12"], "lr_steps"),
                          (["--set", "layer_decay=1.5"], "layer_decay")):
        assert main(["detect", "train", "--output", str(tmp_path / "run"), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_an_evaluation_image_left_out_is_named_with_its_reason(coco_set, tmp_path):
    from convnext.cli.detect import _why_skipped

    def edit(data):
        data["images"][0]["width"] = 32  # the file is 64 wide

    data = CocoData(_edited(coco_set, tmp_path, edit), train=False)
    name = data.describe(0)
    assert _why_skipped(data, name) == f"{name} is 64x64, the json says 32x64"

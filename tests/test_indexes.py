"""Index parsers (space, csv, Kinetics, SSv2, UCF101, HMDB51, image folder), dispatch and missing-file checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vmim.data.indexes import (INDEX_FORMATS, Entry, IndexFormatError, check_missing, missing_summary, read_csv_list,
                               read_hmdb51_split, read_image_folder, read_index, read_kinetics_csv, read_space_list,
                               read_ssv2, read_ucf101_split)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def paths_labels(entries: list[Entry]) -> list[tuple[str, int]]:
    return [(e.path, e.label) for e in entries]


# ----------------------------------------------------------------------------------------------------
# space lists
# ----------------------------------------------------------------------------------------------------


def test_space_list_labels_comments_and_default_root(tmp_path):
    lst = write(tmp_path / "lists" / "train.txt", "# VideoMAE list\n\na/v1.mp4 3\n  b/v2.mp4\t7  \n/abs/v3.mp4 0\n"
                                                  "c/v4.mp4\n")
    assert paths_labels(read_space_list(lst)) == [
        (str(tmp_path / "lists" / "a" / "v1.mp4"), 3),
        (str(tmp_path / "lists" / "b" / "v2.mp4"), 7),
        ("/abs/v3.mp4", 0),
        (str(tmp_path / "lists" / "c" / "v4.mp4"), -1),
    ]


def test_space_list_explicit_root_and_paths_with_spaces(tmp_path):
    lst = write(tmp_path / "train.txt", "my videos/clip 1.mp4   12\nx/../y.mp4 2\n")
    entries = read_space_list(lst, root=tmp_path / "data")
    assert paths_labels(entries) == [(str(tmp_path / "data" / "my videos" / "clip 1.mp4"), 12),
                                     (str(tmp_path / "data" / "y.mp4"), 2)]
    assert entries[0].start_sec is None and entries[0].end_sec is None


@pytest.mark.parametrize("line, problem", [
    ("a.mp4 cat", "integer label"),
    ("a.mp4 0 300 5", "VideoMAEv2"),
])
def test_space_list_errors_name_file_line_and_text(tmp_path, line, problem):
    lst = write(tmp_path / "train.txt", f"# header\nok.mp4 1\n\n{line}\n")
    with pytest.raises(IndexFormatError, match=problem) as err:
        read_space_list(lst)
    assert str(err.value).startswith(f"{lst} line 4: expected 'path [label]'")
    assert str(err.value).endswith(f"got '{line}'")
    assert (err.value.path, err.value.line, err.value.text) == (str(lst), 4, line)


@pytest.mark.parametrize("name, body, text", [
    ("train.txt", "ok.mp4 1\nb.mp4 -1\n", "b.mp4 -1"),  # read as "unlabeled" before, then "has no label"
    ("train.csv", "path,label\nb.mp4,-3\n", "b.mp4,-3"),
])
def test_a_negative_label_is_a_malformed_line(tmp_path, name, body, text):
    lst = write(tmp_path / name, body)
    with pytest.raises(IndexFormatError, match="is negative") as err:
        read_index("space" if name.endswith(".txt") else "csv", lst)
    assert (err.value.path, err.value.line, err.value.text) == (str(lst), 2, text)


# ----------------------------------------------------------------------------------------------------
# csv lists
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["", "path,label\n", "Filename , Class\n", "# comment\nvideo,target\n"])
def test_csv_list_with_and_without_header(tmp_path, header):
    lst = write(tmp_path / "train.csv", header + "a.mp4,1\n\n/abs/b.mp4, 0\nc.mp4,\n")
    assert paths_labels(read_csv_list(lst)) == [(str(tmp_path / "a.mp4"), 1), ("/abs/b.mp4", 0),
                                                (str(tmp_path / "c.mp4"), -1)]


def test_csv_list_quoted_paths_with_commas(tmp_path):
    lst = write(tmp_path / "train.csv", '"clips/a, b.mp4",4\n"x ""quoted"".mp4",5\n')
    assert paths_labels(read_csv_list(lst, root="/data")) == [("/data/clips/a, b.mp4", 4), ('/data/x "quoted".mp4', 5)]


def test_csv_list_byte_order_mark_header(tmp_path):
    lst = tmp_path / "train.csv"
    lst.write_bytes(b"\xef\xbb\xbfpath,label\na.mp4,2\n")
    assert paths_labels(read_csv_list(lst)) == [(str(tmp_path / "a.mp4"), 2)]


@pytest.mark.parametrize("body, line, text", [
    ("a.mp4,1\nfoo\n", 2, "foo"),
    ("a.mp4,1\nb.mp4,1,2\n", 2, "b.mp4,1,2"),
    ("a.mp4,1\npath,label\n", 2, "path,label"),  # a header only counts as the first row
    ("# c\n\nb.mp4,cat\n", 3, "b.mp4,cat"),  # not a known header name
])
def test_csv_list_errors(tmp_path, body, line, text):
    lst = write(tmp_path / "lists" / "train.csv", body)
    with pytest.raises(IndexFormatError) as err:
        read_csv_list(lst)
    assert str(err.value).startswith(f"{lst} line {line}: expected 'path,label'")
    assert str(err.value).endswith(f", got '{text}'")


def test_index_format_error_message_format():
    err = IndexFormatError("lists/train.csv", 7, "expected 'path,label'", "foo")
    assert str(err) == "lists/train.csv line 7: expected 'path,label', got 'foo'"
    assert isinstance(err, ValueError)


# ----------------------------------------------------------------------------------------------------
# Kinetics
# ----------------------------------------------------------------------------------------------------

K_HEADER = "label,youtube_id,time_start,time_end,split\n"


def test_kinetics_each_layout_found(tmp_path):
    root = tmp_path / "k400"
    touch(root / "abseiling" / "aaa_000010_000020.mp4",
          root / "air_drumming" / "bbb_000001_000011.mkv",
          root / "train" / "zumba" / "ccc_000100_000110.webm",
          root / "ddd_000005_000015.mp4")
    csv_path = write(tmp_path / "train.csv", K_HEADER + "abseiling,aaa,10,20,train\n"
                                                        "air drumming,bbb,1.0,11.0,train\n"
                                                        "zumba,ccc,100,110,train\n"
                                                        "abseiling,ddd,5,15,train\n")
    entries = read_kinetics_csv(csv_path, root)
    assert entries == [
        Entry(str(root / "abseiling" / "aaa_000010_000020.mp4"), 0, 10.0, 20.0),
        Entry(str(root / "air_drumming" / "bbb_000001_000011.mkv"), 1, 1.0, 11.0),
        Entry(str(root / "train" / "zumba" / "ccc_000100_000110.webm"), 2, 100.0, 110.0),
        Entry(str(root / "ddd_000005_000015.mp4"), 0, 5.0, 15.0),
    ]


def test_kinetics_first_match_wins_and_missing_gets_first_layout_mp4(tmp_path):
    root = tmp_path / "k"
    touch(root / "a b" / "x_000000_000010.webm", root / "a_b" / "x_000000_000010.mp4", root / "x_000000_000010.mp4",
          root / "a b" / "y_000000_000010.webm", root / "a b" / "y_000000_000010.mkv")
    csv_path = write(tmp_path / "val.csv", K_HEADER + "a b,x,0,10,val\na b,y,0,10,val\na b,z,0,10,val\n")
    assert [e.path for e in read_kinetics_csv(csv_path, root)] == [
        str(root / "a b" / "x_000000_000010.webm"),  # first layout, even though .mp4 exists in later ones
        str(root / "a b" / "y_000000_000010.mkv"),  # .mkv before .webm within one folder
        str(root / "a b" / "z_000000_000010.mp4"),  # not found anywhere
    ]


def test_kinetics_extra_columns_class_names_and_unlabeled(tmp_path):
    csv_path = write(tmp_path / "k700.csv", "label,youtube_id,time_start,time_end,split,is_cc\n"
                                            "zumba,q,3,13,train,0\nabseiling,r,4,14,train,1\n")
    assert [e.label for e in read_kinetics_csv(csv_path, tmp_path)] == [1, 0]  # sorted unique names
    names = ["yoga", "zumba", "abseiling"]
    assert [e.label for e in read_kinetics_csv(csv_path, tmp_path, class_names=names)] == [1, 2]
    with pytest.raises(IndexFormatError, match=r"k700.csv line 3: label not among the 1 given class names, "
                                               r"got 'abseiling'"):
        read_kinetics_csv(csv_path, tmp_path, class_names=["zumba"])
    test_csv = write(tmp_path / "test.csv", "youtube_id,time_start,time_end,split\nt,0,10,test\n")
    assert read_kinetics_csv(test_csv) == [Entry(str(tmp_path / "t_000000_000010.mp4"), -1, 0.0, 10.0)]


@pytest.mark.parametrize("body, line", [
    ("label,id,start,end\nx,y,0,1\n", 1),
    (K_HEADER + "a,b,0,10,train\na,c,zero,10,train\n", 3),
    (K_HEADER + "a,b,0,10\n", 2),
    ("\n# K400\n" + K_HEADER + ",,,,\n\nx,y,nan,1,train\n", 6),  # blank rows and comments are skipped
])
def test_kinetics_errors(tmp_path, body, line):
    csv_path = write(tmp_path / "bad.csv", body)
    with pytest.raises(IndexFormatError, match=f"bad.csv line {line}: expected"):
        read_kinetics_csv(csv_path)


def test_kinetics_20k_rows_resolve_across_layouts(tmp_path):
    root = tmp_path / "k"
    classes = [f"class {c}" for c in range(40)]
    rows = [f"{classes[i % 40]},vid{i:07d},{i % 300},{i % 300 + 10},train" for i in range(20_000)]
    for i in range(0, 20_000, 101):  # one in 101 videos exists, spread over the four layouts
        label = classes[i % 40]
        folder = [root / label, root / label.replace(" ", "_"), root / "train" / label, root][i % 4]
        touch(folder / f"vid{i:07d}_{i % 300:06d}_{i % 300 + 10:06d}.mp4")
    csv_path = write(tmp_path / "train.csv", K_HEADER + "\n".join(rows) + "\n")
    entries = read_kinetics_csv(csv_path, root)  # speed is a benchmark's job, not a timed test's
    assert len(entries) == 20_000
    assert sum(os.path.exists(e.path) for e in entries) == len(range(0, 20_000, 101))
    assert [entries[i].path for i in (0, 101, 202, 303)] == [
        str(root / "class 0" / "vid0000000_000000_000010.mp4"),
        str(root / "class_21" / "vid0000101_000101_000111.mp4"),
        str(root / "train" / "class 2" / "vid0000202_000202_000212.mp4"),
        str(root / "vid0000303_000003_000013.mp4")]
    assert entries[1] == Entry(str(root / "class 1" / "vid0000001_000001_000011.mp4"), 1, 1.0, 11.0)  # missing


# ----------------------------------------------------------------------------------------------------
# Something-Something v2, UCF101, HMDB51
# ----------------------------------------------------------------------------------------------------


def test_ssv2_templates_map_through_bracket_removal(tmp_path):
    labels = write(tmp_path / "something-something-v2-labels.json", json.dumps(
        {"Approaching something with your camera": "0", "Holding something next to something": "1"}))
    train = write(tmp_path / "something-something-v2-train.json", json.dumps([
        {"id": "78687", "label": "holding potato next to vicks vaporub bottle",
         "template": "Holding [something] next to [something]", "placeholders": ["potato", "bottle"]},
        {"id": "42326", "label": "approaching cup with your camera",
         "template": "Approaching [something] with your camera", "placeholders": ["cup"]},
    ]))
    assert paths_labels(read_ssv2(train, labels, "/ssv2/videos")) == [("/ssv2/videos/78687.webm", 1),
                                                                      ("/ssv2/videos/42326.webm", 0)]
    test = write(tmp_path / "something-something-v2-test.json", json.dumps([{"id": "1420"}, {"id": "7"}]))
    assert paths_labels(read_ssv2(test, labels)) == [(str(tmp_path / "1420.webm"), -1), (str(tmp_path / "7.webm"), -1)]
    bad = write(tmp_path / "bad.json", json.dumps([{"id": "1", "template": "Dropping [something]"}]))
    with pytest.raises(IndexFormatError, match="bad.json item 1: template not in .*, got 'Dropping \\[something\\]'"):
        read_ssv2(bad, labels)


def test_ucf101_train_and_test_lists(tmp_path):
    class_ind = write(tmp_path / "ucfTrainTestlist" / "classInd.txt", "1 ApplyEyeMakeup\n2 ApplyLipstick\n"
                                                                      "37 HandstandPushups\n")
    train = write(tmp_path / "ucfTrainTestlist" / "trainlist01.txt",
                  "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nApplyLipstick/v_ApplyLipstick_g09_c02.avi 2\n")
    test = write(tmp_path / "ucfTrainTestlist" / "testlist01.txt",
                 "ApplyLipstick/v_ApplyLipstick_g01_c01.avi\nHandstandPushups/v_HandStandPushups_g01_c01.avi\n")
    root = tmp_path / "UCF-101"
    assert paths_labels(read_ucf101_split(train, class_ind, root)) == [
        (str(root / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g08_c01.avi"), 0),
        (str(root / "ApplyLipstick" / "v_ApplyLipstick_g09_c02.avi"), 1)]
    assert paths_labels(read_ucf101_split(test, class_ind, root)) == [
        (str(root / "ApplyLipstick" / "v_ApplyLipstick_g01_c01.avi"), 1),
        (str(root / "HandstandPushups" / "v_HandStandPushups_g01_c01.avi"), 36)]
    bad = write(tmp_path / "trainlist02.txt", "ApplyLipstick/v_ApplyLipstick_g09_c02.avi 1\n")
    with pytest.raises(IndexFormatError, match="trainlist02.txt line 1: class folder and label disagree"):
        read_ucf101_split(bad, class_ind, root)


def test_hmdb51_split_semantics(tmp_path):
    splits = tmp_path / "testTrainMulti_7030_splits"
    write(splits / "brush_hair_test_split1.txt", "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \n"
                                                 "Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi 2 \n"
                                                 "unused_brush_hair_0.avi 0 \n")
    write(splits / "cartwheel_test_split1.txt", "#20_Rhythm_clap_cartwheel_f_nm_np1_le_goo_0.avi 1\n"
                                                "Cartwheel_test_0.avi 2\n")
    write(splits / "brush_hair_test_split2.txt", "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 2\n")
    root = tmp_path / "hmdb51"
    assert paths_labels(read_hmdb51_split(splits, 1, True, root)) == [
        (str(root / "brush_hair" / "April_09_brush_hair_u_nm_np1_ba_goo_0.avi"), 0),
        (str(root / "cartwheel" / "#20_Rhythm_clap_cartwheel_f_nm_np1_le_goo_0.avi"), 1)]
    assert paths_labels(read_hmdb51_split(splits, 1, False, root)) == [
        (str(root / "brush_hair" / "Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi"), 0),
        (str(root / "cartwheel" / "Cartwheel_test_0.avi"), 1)]
    assert paths_labels(read_hmdb51_split(splits, 2, False, root)) == [
        (str(root / "brush_hair" / "April_09_brush_hair_u_nm_np1_ba_goo_0.avi"), 0)]
    with pytest.raises(FileNotFoundError, match="_test_split3.txt"):
        read_hmdb51_split(splits, 3, True, root)
    write(splits / "clap_test_split1.txt", "x.avi 3\n")
    with pytest.raises(IndexFormatError) as err:
        read_hmdb51_split(splits, 1, True, root)
    assert str(err.value) == f"{splits / 'clap_test_split1.txt'} line 1: expected 'video.avi 0|1|2', got 'x.avi 3'"


# ----------------------------------------------------------------------------------------------------
# Image folders and dispatch
# ----------------------------------------------------------------------------------------------------


def test_image_folder_order_and_extension_filter(tmp_path):
    touch(tmp_path / "n02" / "b.JPEG", tmp_path / "n02" / "a.png", tmp_path / "n02" / "notes.txt",
          tmp_path / "n01" / "z.webp", tmp_path / "n01" / "sub" / "c.Jpg", tmp_path / "n01" / "y.bmp",
          tmp_path / "n03" / "readme.md", tmp_path / "stray.jpg")
    assert paths_labels(read_image_folder(tmp_path)) == [
        (str(tmp_path / "n01" / "y.bmp"), 0), (str(tmp_path / "n01" / "z.webp"), 0),
        (str(tmp_path / "n01" / "sub" / "c.Jpg"), 0),
        (str(tmp_path / "n02" / "a.png"), 1), (str(tmp_path / "n02" / "b.JPEG"), 1),
    ]  # n03 has no image but keeps its class index 2, as in torchvision's ImageFolder


def test_flat_image_folder_is_unlabeled(tmp_path):
    touch(tmp_path / "b.PNG", tmp_path / "a.jpg", tmp_path / "notes.txt", tmp_path / ".ipynb_checkpoints" / "a.jpg")
    assert paths_labels(read_image_folder(tmp_path)) == [(str(tmp_path / "a.jpg"), -1), (str(tmp_path / "b.PNG"), -1)]
    assert read_index("image_folder", tmp_path) == read_image_folder(tmp_path)


@pytest.mark.parametrize("files", [[], ["notes.txt", "list.csv"]])
def test_image_folder_without_images_or_class_folders_says_so(tmp_path, files):
    touch(*(tmp_path / name for name in files))
    with pytest.raises(FileNotFoundError, match=f"image folder {tmp_path}: no image files .* and no class subfolders"):
        read_image_folder(tmp_path)


def test_image_folder_whose_class_folders_hold_no_image_says_so(tmp_path):
    touch(tmp_path / "n01" / "notes.txt", tmp_path / "n02" / "deeper" / "x.mp4")
    with pytest.raises(FileNotFoundError, match=f"image folder {tmp_path}: no image files .* in its 2 class subfolder"):
        read_image_folder(tmp_path)


def test_read_index_dispatch(tmp_path):
    assert INDEX_FORMATS == ("space", "csv", "kinetics_csv", "ssv2", "ucf101", "hmdb51", "image_folder")
    lst = write(tmp_path / "l.txt", "a.mp4 1\n")
    assert read_index("space", lst, "/r") == [Entry("/r/a.mp4", 1)]
    assert read_index("csv", write(tmp_path / "l.csv", "a.mp4,2\n"), None) == [Entry(str(tmp_path / "a.mp4"), 2)]
    k = write(tmp_path / "k.csv", K_HEADER + "zumba,v,1,2,train\n")
    assert read_index("kinetics_csv", k, "/r", class_names=["x", "zumba"])[0].label == 1
    touch(tmp_path / "imgs" / "c" / "i.png")
    assert read_index("image_folder", None, tmp_path / "imgs") == [Entry(str(tmp_path / "imgs" / "c" / "i.png"), 0)]
    with pytest.raises(KeyError, match="unknown index format 'kinetics'.*space, csv, kinetics_csv, ssv2"):
        read_index("kinetics", lst, None)


# ----------------------------------------------------------------------------------------------------
# Missing files
# ----------------------------------------------------------------------------------------------------


def test_check_missing_drop_and_error(tmp_path):
    touch(tmp_path / "a" / "0.mp4", tmp_path / "a" / "2.mp4")
    (tmp_path / "a" / "dead.mp4").symlink_to(tmp_path / "nowhere.mp4")
    entries = [Entry(str(tmp_path / "a" / f"{i}.mp4"), i) for i in range(3)]
    entries += [Entry(str(tmp_path / "a" / "dead.mp4"), 3), Entry(str(tmp_path / "no_dir" / "x.mp4"), 4)]
    kept, missing = check_missing(entries, "drop", "k400")
    assert [e.label for e in kept] == [0, 2]
    assert missing == [str(tmp_path / "a" / "1.mp4"), str(tmp_path / "a" / "dead.mp4"), str(tmp_path / "no_dir/x.mp4")]
    assert check_missing(kept, "error", "k400") == (kept, [])
    with pytest.raises(FileNotFoundError, match="dataset 'k400': 3 of 5 listed files are missing"):
        check_missing(entries, "error", "k400")
    with pytest.raises(ValueError, match="'skip'"):
        check_missing(entries, "skip", "k400")


@pytest.mark.parametrize("policy", ["error", "drop"])
def test_check_missing_refuses_a_listed_folder_naming_list_and_line(tmp_path, policy):
    (tmp_path / "videos" / "a.mp4").mkdir(parents=True)  # a folder named like a video: it counted as present
    touch(tmp_path / "videos" / "b.mp4")
    lst = write(tmp_path / "train.txt", "videos/b.mp4 0\nvideos/a.mp4 1\n")
    with pytest.raises(IndexFormatError, match="lists a folder") as err:
        check_missing(read_space_list(lst), policy, "k400")
    assert (err.value.path, err.value.line, err.value.text) == (str(lst), 2, str(tmp_path / "videos" / "a.mp4"))


def test_missing_summary_lists_first_ten_then_count(tmp_path):
    entries = [Entry(str(tmp_path / f"v{i:02d}.mp4"), 0) for i in range(25)]
    with pytest.raises(FileNotFoundError) as err:
        check_missing(entries, "error", "ssv2")
    lines = str(err.value).splitlines()
    assert lines[0] == "dataset 'ssv2': 25 of 25 listed files are missing:"
    assert lines[1:11] == [f"  {tmp_path / f'v{i:02d}.mp4'}" for i in range(10)]
    assert lines[11:] == ["  ... and 15 more"]
    assert missing_summary("x", ["/p"] * 10, 12) == "dataset 'x': 10 of 12 listed files are missing:\n" + "\n".join(
        ["  /p"] * 10)

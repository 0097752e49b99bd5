"""`mnist-digits predict`: files, folders and globs in; a table, JSON or CSV out; one line per bad file."""

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from mnist_digits import render
from mnist_digits.cli import main


@pytest.fixture
def folder(tmp_path, test_digits):
    """Three images (a 7, a 2 and a 1, in three forms), a blank page, a text file and a truncated PNG."""
    rng = np.random.default_rng(0)
    render.inverted(test_digits.images[0], rng).save(tmp_path / "a_seven.png")
    render.jpeg(test_digits.images[1], rng).save(tmp_path / "b_two.jpg")
    render.rgba(test_digits.images[2], rng).save(tmp_path / "c_one.webp", lossless=True)
    Image.new("L", (120, 80), 255).save(tmp_path / "d_blank.bmp")
    (tmp_path / "e_notes.txt").write_text("not an image, and not in a folder listing")
    (tmp_path / "f_cut.png").write_bytes((tmp_path / "a_seven.png").read_bytes()[:300])
    return tmp_path


def run(capsys, *argv):
    code = main(["predict", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_for_a_folder_with_bad_files_among_good_ones(folder, reference_model_path, capsys):
    code, out, err = run(capsys, str(folder), "--model", reference_model_path)
    lines = out.splitlines()
    assert lines[0].split() == ["image", "digit", "probability", "top", "3", "note"]
    rows = {line.split()[0].rsplit("/", 1)[-1]: line for line in lines[1:]}
    assert sorted(rows) == ["a_seven.png", "b_two.jpg", "c_one.webp", "d_blank.bmp", "f_cut.png"]
    assert rows["a_seven.png"].split()[1] == "7"
    assert rows["b_two.jpg"].split()[1] == "2"
    assert rows["c_one.webp"].split()[1] == "1"
    assert "no digit found" in rows["d_blank.bmp"]
    assert "error: the PNG data is truncated" in rows["f_cut.png"]
    assert code == 1 and err == ""  # a bad file fails the run, after every other file is read


def test_json_and_csv_outputs(folder, tiny_model_file, capsys):
    files = [str(folder / "a_seven.png"), str(folder / "d_blank.bmp"), str(folder / "e_notes.txt")]
    code, out, _ = run(capsys, *files, "--model", str(tiny_model_file), "--json")
    results = json.loads(out)
    assert code == 1 and [r["source"] for r in results] == files
    assert isinstance(results[0]["digit"], int) and len(results[0]["top3"]) == 3
    assert results[1]["error"] == "no digit found" and results[1]["digit"] is None
    assert "not a readable image" in results[2]["error"]

    code, out, _ = run(capsys, *files, "--model", str(tiny_model_file), "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["source"] for r in rows] == files
    assert rows[0]["digit"].isdigit() and len(rows[0]["top3"].split()) == 3
    assert rows[1]["error"] == "no digit found" and rows[1]["digit"] == ""


def test_threshold_marks_uncertain_answers(folder, tiny_model_file, capsys):
    _, out, _ = run(capsys, str(folder / "a_seven.png"), "--model", str(tiny_model_file), "--threshold", "1")
    assert "uncertain (below 100%)" in out
    _, out, _ = run(capsys, str(folder / "a_seven.png"), "--model", str(tiny_model_file), "--threshold", "0")
    assert "uncertain (below" not in out
    code, _, err = run(capsys, "x.png", "--model", str(tiny_model_file), "--threshold", "80")
    assert code == 1 and "--threshold 80.0 is not a probability" in err


def test_globs_and_folders_that_match_nothing_are_reported_in_place(folder, tiny_model_file, capsys):
    (folder / "empty").mkdir()
    pattern = str(folder / "*.jpg")
    code, out, _ = run(
        capsys, pattern, str(folder / "*.gif"), str(folder / "empty"), "--model", str(tiny_model_file)
    )
    lines = out.splitlines()[1:]
    assert lines[0].startswith(str(folder / "b_two.jpg"))
    assert "matches no image files" in lines[1] and "no image files in this folder" in lines[2]
    assert code == 1


def test_multi_reads_a_number_and_saves_what_the_model_saw(
    tmp_path, test_digits, reference_model_path, capsys
):
    digits = test_digits.images[[0, 1, 2, 3]]  # 7 2 1 0
    render.render_number(digits, np.random.default_rng(5)).save(tmp_path / "year.png")
    inputs = tmp_path / "inputs"
    code, out, err = run(
        capsys,
        str(tmp_path / "year.png"),
        "--multi",
        "--model",
        reference_model_path,
        "--save-inputs",
        str(inputs),
    )
    assert code == 0
    row = out.splitlines()[1].split()
    assert row[1] == "7210"
    assert sorted(p.name for p in inputs.iterdir()) == [f"year_{i}.png" for i in range(1, 5)]
    saved = np.asarray(Image.open(inputs / "year_1.png"))
    assert saved.shape == (28, 28) and saved.dtype == np.uint8 and saved.max() == 255
    assert "wrote 4 model inputs" in err

    code, out, _ = run(
        capsys, str(tmp_path / "year.png"), "--multi", "--model", reference_model_path, "--json"
    )
    [reading] = json.loads(out)
    assert reading["number"] == "7210" and [len(d["box"]) for d in reading["digits"]] == [4] * 4


def test_kaggle_and_paths_do_not_mix(tiny_model_file, tmp_path, capsys):
    code, _, err = run(
        capsys, "a.png", "--kaggle", "test.csv", "-o", "s.csv", "--model", str(tiny_model_file)
    )
    assert code == 1 and "no PATHs" in err
    code, _, err = run(capsys, "--kaggle", "test.csv", "--model", str(tiny_model_file))
    assert code == 1 and "-o FILE" in err
    code, _, err = run(capsys, "--model", str(tiny_model_file))
    assert code == 1 and "give image files" in err


def test_workers_and_precision_options_are_checked(folder, tiny_model_file, capsys):
    files = [str(folder / "a_seven.png")]
    code, _, err = run(capsys, *files, "--model", str(tiny_model_file), "--workers", "0")
    assert code == 1 and "--workers 0: give 1 or more." in err
    code, out, _ = run(
        capsys, *files, "--model", str(tiny_model_file), "--workers", "1", "--precision", "fp32"
    )
    assert code == 0 and "a_seven.png" in out


def test_predict_says_which_runtime_auto_took_and_one_image_never_makes_the_choice(
    folder, tiny_model_file, tmp_path, monkeypatch, capsys
):
    import torch

    from mnist_digits import runtime_choice as choosing
    from mnist_digits.runtimes import CACHE_VAR

    monkeypatch.setenv(CACHE_VAR, str(tmp_path / "runtime-cache"))
    monkeypatch.setattr(choosing, "choose_runtime", lambda *a, **k: pytest.fail("chose for one image"))
    image = str(folder / "a_seven.png")
    code, out, err = run(capsys, image, "--model", str(tiny_model_file))
    assert code == 0 and out and err == ""  # no choice cached, none made: PyTorch, as before

    measured = (choosing.Measurement("torch", 2000.0, 0.25, True, "the reference"),)
    choice = choosing.RuntimeChoice("torch", "torch", "the only runtime here", measured)
    choosing.keep_choice(choosing.cache_key(tiny_model_file, torch.device("cpu")), choice)
    code, out, err = run(capsys, image, "--model", str(tiny_model_file), "--device", "cpu")
    assert code == 0 and out
    assert err == "runtime torch (auto: the only runtime here; cached); one image: torch (0.25 ms p50)\n"
    code, _, err = run(
        capsys, image, "--model", str(tiny_model_file), "--device", "cpu", "--runtime", "torch"
    )
    assert code == 0 and err == ""  # a runtime given is not announced


def test_runtime_is_one_of_the_four(tiny_model_file, capsys):
    with pytest.raises(SystemExit):
        main(["predict", "x.png", "--model", str(tiny_model_file), "--runtime", "tensorrt"])
    err = capsys.readouterr().err
    assert "invalid choice: 'tensorrt'" in err and "'onnx-int8'" in err

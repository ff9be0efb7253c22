"""The data that score, ood and encode take: a small folder taken whole, other data read at the
model's size and channels (--convert), and names that tell data sets apart."""

import numpy as np
import pytest
from PIL import Image

from vaelab.cli import main
from vaelab.codes import encode
from vaelab.data import DataError
from vaelab.scores import score
from vaelab.sources import distinct_names

TINY = ["--hidden", "16", "--latent-dim", "2", "--batch-size", "100", "--epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    rng = np.random.default_rng(0)
    # a colour model of 12x12 images, trained on an array file in a folder named 64 (as emoji sets are)
    (root / "emoji-a" / "64").mkdir(parents=True)
    colour = root / "emoji-a" / "64" / "icons.npz"
    np.savez(colour, train=rng.integers(0, 256, (200, 12, 12, 3), dtype=np.uint8),
             test=rng.integers(0, 256, (40, 12, 12, 3), dtype=np.uint8))
    out = {"grey": root / "grey", "colour": root / "colour", "root": root}
    assert main(["train", "--dataset", "mnist-sample", *TINY, "--out", str(out["grey"])]) == 0
    assert main(["train", "--dataset", str(colour), *TINY, "--out", str(out["colour"])]) == 0
    return out


def _folder(path, n, size=28, mode="L"):
    path.mkdir(parents=True)
    rng = np.random.default_rng(n)
    for i in range(n):
        shape = (size, size) if mode == "L" else (size, size, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path / f"im{i}.png")
    return path


def test_a_folder_of_five_images_is_scored_encoded_and_compared_whole(runs, tmp_path, capsys):
    five = _folder(tmp_path / "five", 5)
    assert main(["score", str(runs["grey"]), str(five), "--k", "2", "--quiet"]) == 0
    assert "5 images of five" in capsys.readouterr().out
    assert len((runs["grey"] / "scores-five-k2.csv").read_text().splitlines()) == 6
    codes = encode(runs["grey"], str(five), progress=False)
    assert sorted(codes["file"]) == [f"im{i}.png" for i in range(5)]
    assert main(["ood", str(runs["grey"]), "--out-of", str(five), "--k", "1", "--scores", "mse", "--quiet"]) == 0
    np.save(tmp_path / "three.npy", np.zeros((3, 28, 28), np.uint8))  # an array file too small to split
    assert len(score(runs["grey"], str(tmp_path / "three.npy"), k=1, progress=False)) == 3
    # asking for the empty split of a folder of one image says how to take every image
    one = _folder(tmp_path / "one", 1)
    (empty,) = {"train", "test"} - set(score(runs["grey"], str(one), k=1, progress=False)["split"])
    with pytest.raises(DataError, match=f"no images in the {empty} split .* --split all"):
        score(runs["grey"], str(one), split=empty, progress=False)
    # training still needs both splits, the folder's cache built for scoring notwithstanding
    assert main(["train", "--dataset", str(one), *TINY, "--out", str(tmp_path / "r")]) == 2
    assert "test-fraction" in capsys.readouterr().err


def test_encode_without_data_takes_every_image_of_the_run_and_says_so(runs, tmp_path, capsys):
    assert main(["encode", str(runs["grey"]), "--out", str(tmp_path / "c.npz"), "--quiet"]) == 0
    z = np.load(tmp_path / "c.npz")
    assert len(z["mean"]) == 2500 and set(z["split"]) == {"train", "test"}  # mnist-sample: 2,000 + 500
    assert "2000 train and 500 test" in capsys.readouterr().out
    assert set(encode(runs["grey"], split="test", n=7, progress=False)["split"]) == {"test"}


def test_grey_data_against_a_colour_model_and_colour_against_grey_with_convert(runs, tmp_path, capsys):
    big_colour = _folder(tmp_path / "colour", 6, size=40, mode="RGB")
    # without --convert: the shapes differ, and the error names the option
    assert main(["score", str(runs["grey"]), str(big_colour), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "3x40x40" in err and "1x28x28" in err and "--convert" in err
    assert main(["score", str(runs["grey"]), str(big_colour), "--convert", "--k", "2", "--quiet"]) == 0
    assert "6 images" in capsys.readouterr().out
    # grey digits (a named dataset, 28x28) against the 12x12 colour model
    with pytest.raises(DataError, match="convert"):
        score(runs["colour"], "mnist-sample", n=5, progress=False)
    t = score(runs["colour"], "mnist-sample", n=5, k=2, convert=True, progress=False)
    assert len(t) == 5 and np.isfinite(t["log_px"]).all()
    codes = encode(runs["colour"], str(tmp_path / "colour"), convert=True, progress=False)
    assert codes["mean"].shape == (6, 2)
    assert main(["ood", str(runs["colour"]), "--out-of", "mnist-sample", str(big_colour), "--convert", "--k", "1",
                 "--n", "20", "--scores", "mse", "--quiet"]) == 0


def test_data_sets_whose_paths_end_alike_get_names_that_tell_them_apart(runs, tmp_path, capsys):
    assert distinct_names(["mnist", "/x/emoji-a/64", "/x/emoji-b/64"]) == ["mnist", "emoji-a/64", "emoji-b/64"]
    assert distinct_names(["/p/a/b/64", "/p/c/b/64", "/p/c/b/64"]) == ["a/b/64", "c/b/64", "c/b/64"]
    assert distinct_names(["/data/mnist", "mnist"]) == ["data/mnist", "mnist"]
    # the run trained on emoji-a/64/icons.npz; another set of the same name is named by its folder
    other = tmp_path / "emoji-b" / "64"
    other.mkdir(parents=True)
    np.savez(other / "icons.npz", images=np.random.default_rng(1).integers(0, 256, (8, 12, 12, 3), dtype=np.uint8))
    t = score(runs["colour"], str(other / "icons.npz"), k=1, progress=False)
    assert t.info["dataset"] == "emoji-b/64/icons.npz"
    assert main(["score", str(runs["colour"]), str(other / "icons.npz"), "--k", "1", "--top", "2", "--quiet"]) == 0
    assert "8 images of emoji-b/64/icons.npz" in capsys.readouterr().out
    assert (runs["colour"] / "scores-emoji-b_64_icons.npz-k1.csv").is_file()
    own = score(runs["colour"], k=1, n=3, progress=False)
    assert own.info["dataset"] == "icons.npz"  # alone, the shortest name


def test_evaluate_says_which_folder_or_file_it_read(runs, capsys):
    assert main(["evaluate", str(runs["colour"]), "--k", "1", "--n", "5", "--quiet"]) == 0
    source = str(runs["root"] / "emoji-a" / "64" / "icons.npz")
    assert f"icons.npz (test, n=5) from {source}" in capsys.readouterr().out

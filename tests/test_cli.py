"""`catface` on the command line: a folder of real photos (with a HEIC, a broken file and a text
file in it) in-process and through a running service, one JSON line per photo."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import tomllib

import numpy as np
import pytest
from PIL import Image

from service import imaging
from service.cli import main
from service.config import Settings

from .conftest import CATS, DOGS, REPO, data_file, free_port, iphone_style, photo, service_process

FAST = ["--threads", "1", "--jobs", "2"]  # a shared machine


@pytest.fixture(scope="module")
def album(tmp_path_factory):
    """photos/: the four cats, a dog in a subfolder, an iPhone-style HEIC of the first cat (stored
    on its side, turned by metadata), a truncated JPEG, a text file and a hidden file."""
    root = tmp_path_factory.mktemp("album") / "photos"
    (root / "dogs").mkdir(parents=True)
    for name in CATS:
        shutil.copy(data_file(name), root / os.path.basename(name))
    shutil.copy(data_file(DOGS[0]), root / "dogs" / "dog.jpg")
    (root / "IMG_0001.HEIC").write_bytes(iphone_style(photo(CATS[0]), "HEIF", 6, quality=90))
    (root / "broken.jpg").write_bytes(data_file(CATS[1]).read_bytes()[:2000])
    (root / "notes.txt").write_text("the cats of the house\n")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return root


def run(argv, capsys) -> tuple[int, list[dict], str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def by_name(lines: list[dict]) -> dict[str, dict]:
    return {os.path.basename(line["file"]): line for line in lines}


def landmarks(face: dict) -> np.ndarray:
    return np.array(list(face["landmarks"].values()), float)


def test_detect_over_a_folder_gives_one_line_per_photo_and_names_the_broken_one(album, capsys):
    code, lines, err = run(["detect", str(album), "--progress", *FAST], capsys)
    expected = sorted(["IMG_0001.HEIC", "broken.jpg", *(os.path.basename(n) for n in CATS)]) + ["dog.jpg"]
    assert [os.path.basename(line["file"]) for line in lines] == expected  # sorted, subfolders after files
    got = by_name(lines)
    assert got["broken.jpg"]["error"]["status"] == 422 and got["broken.jpg"]["error"]["type"] == "corrupt-image"
    assert code == 1, "a file with an error line makes the exit status 1"
    for name in CATS:
        line = got[os.path.basename(name)]
        assert (line["width"], line["height"]) == photo(name).size and len(line["faces"]) >= 1
    assert got["dog.jpg"]["faces"] == []
    # The iPhone-style HEIC: upright, and the faces of its JPEG within a few pixels.
    heic, jpeg = got["IMG_0001.HEIC"], got[os.path.basename(CATS[0])]
    assert (heic["width"], heic["height"]) == (jpeg["width"], jpeg["height"])
    assert np.abs(np.subtract(heic["faces"][0]["box"], jpeg["faces"][0]["box"])).max() < 3
    assert np.abs(landmarks(heic["faces"][0]) - landmarks(jpeg["faces"][0])).max() < 3
    # Nothing silently dropped: the text file is named on stderr; progress and the summary are there.
    assert "notes.txt" in err and ".DS_Store" not in err
    assert "7/7 photos" in err and "1 with an error line" in err


@pytest.mark.parametrize("budget_photos", [1, 100])
def test_decodes_on_the_jobs_threads_share_the_decode_budget(album, capsys, monkeypatch, budget_photos):
    """--jobs 4 over the album with a budget of the largest photo's decode bytes: the decodes in
    progress never hold more together, and every photo is still answered; with room for many,
    more is held at once (the test can fail)."""
    needed = max(imaging.read_header(path.read_bytes(), **Settings().decode_limits()).needed
                 for path in album.rglob("*") if path.suffix in (".jpg", ".HEIC"))  # (broken.jpg's header is whole)
    monkeypatch.setenv("CATFACE_MAX_DECODE_BYTES", str(needed * budget_photos))
    held, most, lock = [0], [0], threading.Lock()
    decode = imaging.decode_pixels

    def slow_decode(header):
        with lock:
            held[0] += header.needed
            most[0] = max(most[0], held[0])
        try:
            time.sleep(0.05)  # long enough for the other threads to arrive
            return decode(header)
        finally:
            with lock:
                held[0] -= header.needed
    monkeypatch.setattr(imaging, "decode_pixels", slow_decode)
    code, lines, _ = run(["detect", str(album), "--threads", "1", "--jobs", "4"], capsys)
    assert len(lines) == 7 and sum("faces" in line for line in lines) == 6  # (broken.jpg: its error line)
    assert most[0] <= needed if budget_photos == 1 else most[0] > needed


def test_named_files_are_read_whatever_their_extension_and_missing_ones_get_a_line(album, tmp_path, capsys):
    renamed = tmp_path / "cat.data"
    shutil.copy(album / os.path.basename(CATS[2]), renamed)
    out = tmp_path / "faces.jsonl"
    code = main(["detect", str(renamed), str(tmp_path / "missing.jpg"), "--out", str(out), "-q", *FAST])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 1 and len(lines) == 2 and capsys.readouterr().err == ""
    assert lines[0]["faces"] and lines[1]["error"]["type"] == "unreadable-file"


def test_every_photo_answered_is_exit_0_and_no_photo_is_exit_2(album, tmp_path, capsys):
    code, lines, _ = run(["breeds", str(album / os.path.basename(CATS[0])), str(album / "dogs"), *FAST], capsys)
    assert code == 0 and [line["cat"] for line in lines] == [True, False]
    assert lines[0]["breeds"] and lines[1]["breeds"] == []
    (tmp_path / "empty").mkdir()
    assert main(["detect", str(tmp_path / "empty"), *FAST]) == 2
    assert main(["detect", str(album), "--models", str(tmp_path / "empty"), "-q", *FAST]) == 3
    assert "cannot be loaded" in capsys.readouterr().err  # said even with -q
    with pytest.raises(SystemExit) as usage:
        main(["detect"])
    assert usage.value.code == 2


def test_annotate_draws_upright_copies_keeping_the_folders(album, tmp_path, capsys):
    out_dir = tmp_path / "decorated"
    code, lines, _ = run(["annotate", str(album), "--sticker", "glasses", "--out-dir", str(out_dir), *FAST], capsys)
    got = by_name(lines)
    assert code == 1 and "error" in got["broken.jpg"]
    drawn = Image.open(out_dir / "IMG_0001.jpg")
    assert drawn.format == "JPEG" and drawn.size == photo(CATS[0]).size  # upright, at its own size
    assert got["IMG_0001.HEIC"]["faces"] == 1 and got["IMG_0001.HEIC"]["stickers"][0].startswith("glasses;x=")
    assert Image.open(out_dir / "dogs" / "dog.jpg").size == photo(DOGS[0]).size
    assert got["dog.jpg"]["faces"] == 0 and got["dog.jpg"]["stickers"] == []
    assert sorted(p.name for p in out_dir.rglob("*.jpg")) == sorted(
        os.path.basename(line["out"]) for line in lines if "out" in line)


def test_url_sends_the_photos_to_a_running_service_with_the_same_answers(album, tmp_path, capsys):
    local = by_name(run(["detect", str(album), *FAST], capsys)[1])
    with service_process(tmp_path / "server.log") as (_, url):
        code, lines, _ = run(["detect", str(album), "--url", url, "--jobs", "3"], capsys)
        assert code == 1 and len(lines) == len(local)
        for name, line in by_name(lines).items():
            if "error" in line:
                assert line["error"] == local[name]["error"]
                continue
            assert len(line["faces"]) == len(local[name]["faces"])
            for a, b in zip(line["faces"], local[name]["faces"]):
                assert np.abs(np.subtract(a["box"], b["box"])).max() < 0.5
        out_dir = tmp_path / "drawn"
        code, lines, _ = run(["annotate", str(album / "IMG_0001.HEIC"), "--url", url, "--sticker", "hat",
                              "--format", "png", "--out-dir", str(out_dir)], capsys)
        assert code == 0 and lines[0]["faces"] == 1 and lines[0]["stickers"][0].startswith("hat;")
        assert Image.open(out_dir / "IMG_0001.png").size == photo(CATS[0]).size
    code, lines, err = run(["detect", str(album), "--url", f"http://127.0.0.1:{free_port()}"], capsys)
    assert code == 3 and lines == [] and "not ready" in err


def test_the_installed_command_explains_itself_and_runs():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["catface"] == "service.cli:main"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    shown = subprocess.run([sys.executable, "-m", "service.cli", "--help"], capture_output=True, text=True, env=env)
    assert shown.returncode == 0
    assert all(word in shown.stdout for word in ("detect", "annotate", "--url", "exit status", "HEIC"))
    one = subprocess.run([sys.executable, "-m", "service.cli", "detect", "--threads", "1",
                          str(data_file(CATS[3]))], capture_output=True, text=True, env=env, timeout=120)
    assert one.returncode == 0 and len(json.loads(one.stdout)["faces"]) >= 1
    assert "1 photo in" in one.stderr and "[" not in one.stderr  # no progress bar when stderr is not a terminal

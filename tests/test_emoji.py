"""The emoji recipe on a small tarball with the real emoji-datasource layout, built inside each test."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from imagetext import emoji

HOLD = "1f9d1-200d-1f91d-200d-1f9d1"
ENTRIES = [
    {
        "name": "WAVING HAND SIGN",
        "short_names": ["wave"],
        "image": "1f44b.png",
        "skin_variations": {"1F3FD": {"unified": "1F44B-1F3FD", "image": "1f44b-1f3fd.png"}},
    },
    {
        "name": "PEOPLE HOLDING HANDS",
        "short_names": ["people_holding_hands"],
        "image": f"{HOLD}.png",
        "skin_variations": {
            "1F3FB-1F3FF": {"image": f"{HOLD}-1f3fb-1f3ff.png"},
            "1F3FC-1F3FC": {"image": f"{HOLD}-1f3fc-1f3fc.png"},  # a symlink in the tarball: refused
            "1F3FE-1F3FE": {"image": f"{HOLD}-1f3fe-1f3fe.png"},  # absent from the tarball: missing
        },
    },
    {"name": "KEYCAP: *", "short_names": ["keycap_star"], "short_name": "keycap_star", "image": "2a-fe0f-20e3.png"},
    {"name": None, "short_names": None, "unified": "1F600", "image": "1f600.png"},
    {"name": "EVIL", "short_names": ["evil"], "image": "../../evil.png"},  # unsafe name in emoji.json
]
WRITTEN = ["1f44b.png", "1f44b-1f3fd.png", f"{HOLD}.png", f"{HOLD}-1f3fb-1f3ff.png", "2a-fe0f-20e3.png", "1f600.png"]


def _png(index: int, size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (size, size), (index * 30 % 256, 80, 200, 255)).save(buffer, format="PNG")
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def make_tarball(path: Path, vendor: str = "twitter") -> dict[str, bytes]:
    """Write an npm-pack-like .tgz; return the PNG bytes of every image that must be written."""
    images = {name: _png(index) for index, name in enumerate(WRITTEN)}
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "package/LICENSE", b"MIT")
        _add(tar, "package/emoji_pretty.json", b"[]")
        _add(tar, "package/emoji.json", json.dumps(ENTRIES).encode())
        for name, data in images.items():
            _add(tar, f"package/img/{vendor}/64/{name}", data)
        _add(tar, f"package/img/{vendor}/64/{HOLD}-1f3fc-1f3fc.png", kind=tarfile.SYMTYPE, link="/etc/passwd")
        _add(tar, f"package/img/{vendor}/64/unreferenced.png", _png(99))
        _add(tar, f"package/img/{vendor}/32/1f44b.png", _png(1, 32))
        _add(tar, f"package/img/{vendor}/sheets/64.png", _png(2))
        _add(tar, "package/img/other/64/1f44b.png", _png(3))
        _add(tar, f"package/img/{vendor}/64/../../evil.png", b"evil")
        _add(tar, str(path.parent / "evil_absolute.png"), b"evil")
    return images


def read_captions(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_writes_referenced_64px_pairs_with_captions(tmp_path, caplog):
    images = make_tarball(tmp_path / "twitter.tgz")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="imagetext.emoji"):
        counts = emoji.write_emoji_folder(out, vendors=("twitter",), tarballs={"twitter": tmp_path / "twitter.tgz"})

    assert counts == {"twitter": 6}
    folder = out / "twitter"
    expected = {name for image in WRITTEN for name in (image, image.replace(".png", ".txt"))} | {".complete"}
    assert {path.name for path in folder.iterdir()} == expected
    assert (folder / ".complete").read_text().strip() == "6"
    for name, data in images.items():
        assert (folder / name).read_bytes() == data
        assert Image.open(folder / name).size == (64, 64)

    assert read_captions(folder / "1f44b.txt") == ["waving hand sign, twitter emoji", "wave, twitter emoji"]
    assert read_captions(folder / "1f44b-1f3fd.txt") == [
        "waving hand sign, medium skin tone, twitter emoji",
        "wave, medium skin tone, twitter emoji",
    ]
    # the short name equals the name once `_` becomes a space: one line, not two
    assert read_captions(folder / f"{HOLD}-1f3fb-1f3ff.txt") == [
        "people holding hands, light skin tone and dark skin tone, twitter emoji"
    ]
    assert read_captions(folder / "2a-fe0f-20e3.txt") == ["keycap: *, twitter emoji", "keycap star, twitter emoji"]
    assert read_captions(folder / "1f600.txt") == ["emoji 1f600, twitter emoji"]

    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "3 referenced images not taken (1 missing" in warnings[0]
    assert "1 not regular files or not 64 px PNGs, 1 unsafe names" in warnings[0]

    attribution = (out / "ATTRIBUTION").read_text(encoding="utf-8")
    assert "CC-BY 4.0" in attribution and "iamcal" in attribution and "MIT" in attribution
    assert "Apache-2.0" not in attribution  # google was not written


def test_malicious_members_are_never_written(tmp_path, monkeypatch):
    make_tarball(tmp_path / "twitter.tgz")
    monkeypatch.chdir(tmp_path / ".")
    out = tmp_path / "a" / "b" / "out"
    emoji.write_emoji_folder(out, vendors=("twitter",), tarballs={"twitter": tmp_path / "twitter.tgz"})

    assert list(tmp_path.rglob("evil*")) == []
    assert not (tmp_path / "evil_absolute.png").exists()
    assert not any(path.is_symlink() for path in out.rglob("*"))
    assert all(stat.S_ISREG(path.lstat().st_mode) for path in (out / "twitter").iterdir())
    assert {path.name for path in out.iterdir()} == {"twitter", "ATTRIBUTION"}  # no partial folder left


def test_both_vendors_and_vendor_word(tmp_path):
    tarballs = {vendor: tmp_path / f"{vendor}.tgz" for vendor in ("twitter", "google")}
    for vendor, path in tarballs.items():
        make_tarball(path, vendor)
    counts = emoji.write_emoji_folder(tmp_path / "out", tarballs=tarballs)

    assert counts == {"twitter": 6, "google": 6}
    assert read_captions(tmp_path / "out" / "google" / "1f44b.txt") == [
        "waving hand sign, google emoji",
        "wave, google emoji",
    ]
    attribution = (tmp_path / "out" / "ATTRIBUTION").read_text(encoding="utf-8")
    assert "twitter/: Twitter Twemoji" in attribution and "google/: Google Noto emoji images: Apache-2.0" in attribution


def test_rerun_reuses_a_complete_folder(tmp_path, monkeypatch):
    make_tarball(tmp_path / "twitter.tgz")
    out = tmp_path / "out"
    emoji.write_emoji_folder(out, vendors=("twitter",), tarballs={"twitter": tmp_path / "twitter.tgz"})
    caption = out / "twitter" / "1f44b.txt"
    os.utime(caption, (1, 1))

    def no_download(*args):
        raise AssertionError("a complete vendor folder must not be fetched again")

    monkeypatch.setattr(emoji, "fetch_tarball", no_download)
    assert emoji.write_emoji_folder(out, vendors=("twitter",)) == {"twitter": 6}
    assert caption.stat().st_mtime == 1


def test_incomplete_existing_folder_is_refused(tmp_path):
    make_tarball(tmp_path / "twitter.tgz")
    (tmp_path / "out" / "twitter").mkdir(parents=True)
    (tmp_path / "out" / "twitter" / "old.png").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="not a complete emoji folder"):
        emoji.write_emoji_folder(tmp_path / "out", vendors=("twitter",), tarballs={"twitter": tmp_path / "twitter.tgz"})
    assert [path.name for path in (tmp_path / "out" / "twitter").iterdir()] == ["old.png"]


def test_interrupted_build_leaves_nothing_half_written(tmp_path, monkeypatch):
    make_tarball(tmp_path / "twitter.tgz")
    real_extract = emoji._extract_pairs

    def extract_then_interrupt(*args):
        real_extract(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(emoji, "_extract_pairs", extract_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        emoji.write_emoji_folder(tmp_path / "out", vendors=("twitter",), tarballs={"twitter": tmp_path / "twitter.tgz"})
    assert list((tmp_path / "out").iterdir()) == []


def test_skin_tone_phrases():
    entry = {"name": "COUPLE WITH HEART", "short_names": ["couple_with_heart"]}
    assert emoji.caption_lines(entry, "google", "1F3FC-1F3FC") == [
        "couple with heart, medium-light skin tone, google emoji"
    ]
    assert emoji.caption_lines(entry, "google", "1F3FE-1F3FB") == [
        "couple with heart, medium-dark skin tone and light skin tone, google emoji"
    ]
    assert emoji.caption_lines({"name": "  ODD\nNAME ", "short_names": ["", 7]}, "twitter") == [
        "odd name, twitter emoji"
    ]


def test_missing_npm_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="install Node.js/npm.*or pass a tarball you already have"):
        emoji.write_emoji_folder(tmp_path / "out", vendors=("twitter",))
    assert not (tmp_path / "out" / "twitter").exists()


def _fake_npm(bin_dir: Path, script: str) -> None:
    bin_dir.mkdir()
    (bin_dir / "npm").write_text("#!/bin/sh\n" + script)
    (bin_dir / "npm").chmod(0o755)


def test_npm_failure_and_success_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    _fake_npm(tmp_path / "bin", 'echo "npm error code E404" >&2\necho "npm error 404 Not Found" >&2\nexit 1\n')
    with pytest.raises(RuntimeError, match="code E404; 404 Not Found.*pass a tarball you already have"):
        emoji.fetch_tarball("twitter", "99.0.0", tmp_path / "downloads")

    source = tmp_path / "twitter.tgz"
    make_tarball(source)
    (tmp_path / "bin" / "npm").unlink()
    (tmp_path / "bin").rmdir()
    # npm pack SPEC --pack-destination DEST: copy the tarball into DEST and print its name, as npm does
    _fake_npm(
        tmp_path / "bin",
        f'cp "{source}" "$4/emoji-datasource-twitter-16.0.0.tgz"\necho emoji-datasource-twitter-16.0.0.tgz\n',
    )
    assert emoji.write_emoji_folder(tmp_path / "out", vendors=("twitter",)) == {"twitter": 6}


def test_unknown_vendor_and_non_tarball(tmp_path):
    with pytest.raises(ValueError, match="choose from"):
        emoji.write_emoji_folder(tmp_path / "out", vendors=("apple",))
    (tmp_path / "fake.tgz").write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match="not a readable tarball"):
        emoji.write_emoji_folder(tmp_path / "out", vendors=("twitter",), tarballs={"twitter": tmp_path / "fake.tgz"})


@pytest.mark.network
def test_real_npm_package_twitter(tmp_path):
    counts = emoji.write_emoji_folder(tmp_path / "emoji", vendors=("twitter",))
    folder = tmp_path / "emoji" / "twitter"
    assert counts == {"twitter": 3786}
    assert len(list(folder.glob("*.png"))) == len(list(folder.glob("*.txt"))) == 3786
    assert read_captions(folder / "1f385-1f3fb.txt") == [
        "father christmas, light skin tone, twitter emoji",
        "santa, light skin tone, twitter emoji",
    ]
    assert Image.open(folder / "1f385.png").size == (64, 64)


def test_an_emoji_image_must_be_a_small_png_of_the_expected_size(tmp_path):
    """A 344-byte gzip can hold a 512 MB member: sizes are checked from the header, then the PNG header."""
    path = tmp_path / "twitter.tgz"
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "package/emoji.json", json.dumps(ENTRIES).encode())
        _add(tar, f"package/img/twitter/64/{WRITTEN[0]}", _png(0, size=4096))  # a PNG, the wrong size
        _add(tar, f"package/img/twitter/64/{WRITTEN[1]}", b"not a png at all")
        _add(tar, f"package/img/twitter/64/{WRITTEN[2]}", bytes(emoji.MAX_PNG_BYTES + 1))  # over the size cap
        _add(tar, f"package/img/twitter/64/{WRITTEN[3]}", _png(3))
    counts = emoji.write_emoji_folder(tmp_path / "out", vendors=("twitter",), tarballs={"twitter": path})
    assert counts == {"twitter": 1}
    assert sorted(p.name for p in (tmp_path / "out" / "twitter").glob("*.png")) == [WRITTEN[3]]

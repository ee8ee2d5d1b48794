"""Real image–caption pairs: the 64×64 emoji PNGs of the emoji-datasource npm packages (by iamcal).

`write_emoji_folder(OUT)` writes the DALLE-pytorch folder layout, one pair per referenced image:

    OUT/twitter/1f600.png   OUT/twitter/1f600.txt   (one caption per line)
    OUT/google/…            OUT/ATTRIBUTION

Only `package/emoji.json` and the PNGs of `package/img/<vendor>/64/` that it references (`image` and
`skin_variations[*].image`) are read from each tarball, one member at a time, never with `extractall`.
Each vendor folder is built under a hidden sibling name and renamed into place when complete, with a
`.complete` marker holding its pair count; a later run reuses a complete folder instead of rebuilding it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from imagetext.files import atomic_path, partial_dir
from imagetext.progress import ProgressBar

log = logging.getLogger(__name__)

DEFAULT_VERSION = "16.0.0"
IMAGE_SIZE = 64
MAX_PNG_BYTES = 1 << 20  # a 64×64 RGBA PNG is at most ~16 KB (raw pixels); the header's size is checked first
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COMPLETE_MARKER = ".complete"
NPM_TIMEOUT_S = 600

VENDOR_LICENSES = {
    "twitter": "Twitter Twemoji images: CC-BY 4.0 (https://creativecommons.org/licenses/by/4.0/), "
    "© Twitter, Inc. (now X Corp.) and other contributors, https://github.com/twitter/twemoji",
    "google": "Google Noto emoji images: Apache-2.0 (https://www.apache.org/licenses/LICENSE-2.0), "
    "© Google Inc., https://github.com/googlefonts/noto-emoji",
}
SKIN_TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark", "1F3FF": "dark"}


def fetch_tarball(vendor: str, version: str, dest: Path) -> Path:
    """Download `emoji-datasource-{vendor}@{version}` with `npm pack` into `dest`; return the .tgz path."""
    spec = f"emoji-datasource-{vendor}@{version}"
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            f"npm is not on PATH: install Node.js/npm to download {spec}, "
            f"or pass a tarball you already have (made with `npm pack {spec}` elsewhere)"
        )
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    command = [npm, "pack", spec, "--pack-destination", str(dest)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=NPM_TIMEOUT_S)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        errors = [
            line.removeprefix("npm error").strip()
            for line in (error.stderr or "").splitlines()
            if line.startswith("npm error")
        ]
        reason = "; ".join(errors[:2]) or f"{type(error).__name__}"
        raise RuntimeError(
            f"`npm pack {spec}` failed ({reason}): check the network and npm registry, "
            f"or pass a tarball you already have"
        ) from None
    tarball = dest / result.stdout.strip().splitlines()[-1]
    if not tarball.is_file():
        raise RuntimeError(
            f"`npm pack {spec}` did not leave the tarball it named ({tarball}); pass a tarball you already have"
        )
    return tarball


def write_emoji_folder(
    out: Path,
    vendors: tuple[str, ...] | list[str] = ("twitter", "google"),
    version: str = DEFAULT_VERSION,
    tarballs: dict[str, Path] | None = None,
) -> dict[str, int]:
    """Write `OUT/<vendor>/` image–caption pairs and `OUT/ATTRIBUTION`; return the pair count per vendor.

    `tarballs` maps a vendor to an already downloaded .tgz; other vendors are fetched with `npm pack`.
    """
    unknown = [vendor for vendor in vendors if vendor not in VENDOR_LICENSES]
    if unknown:
        raise ValueError(f"unknown emoji vendor(s) {unknown}: choose from {sorted(VENDOR_LICENSES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    with tempfile.TemporaryDirectory(prefix="emoji-npm-") as downloads:
        for vendor in vendors:
            folder = out / vendor
            if (folder / COMPLETE_MARKER).is_file():
                counts[vendor] = int((folder / COMPLETE_MARKER).read_text())
                log.info("emoji %s: reusing %s (%d pairs)", vendor, folder, counts[vendor])
                continue
            if folder.exists():
                raise RuntimeError(
                    f"{folder} exists but is not a complete emoji folder (no {COMPLETE_MARKER}): "
                    f"remove it or choose another output folder"
                )
            tarball = (tarballs or {}).get(vendor) or fetch_tarball(vendor, version, Path(downloads))
            counts[vendor] = _build_vendor_folder(Path(tarball), vendor, folder)
    _write_attribution(out)
    return counts


def caption_lines(entry: dict, vendor: str, tone_key: str | None = None) -> list[str]:
    """Captions of one emoji.json entry: its name, then each short name, with skin tone and vendor."""
    tone = f", {_tone_phrase(tone_key)}" if tone_key else ""
    names = [entry.get("name")] + list(entry.get("short_names") or []) + [entry.get("short_name")]
    phrases = [" ".join(name.replace("_", " ").lower().split()) for name in names if isinstance(name, str)]
    phrases = [phrase for phrase in phrases if phrase] or [f"emoji {str(entry.get('unified', '')).lower()}".strip()]
    return list(dict.fromkeys(f"{phrase}{tone}, {vendor} emoji" for phrase in phrases))


def referenced_images(entries: list[dict], vendor: str) -> dict[str, list[str]]:
    """Map each image file named by `image` / `skin_variations[*].image` to its caption lines."""
    captions: dict[str, list[str]] = {}
    for entry in entries:
        skin_variations = entry.get("skin_variations") or {}
        variants = [(entry.get("image"), None)]
        variants += [(variation.get("image"), tone_key) for tone_key, variation in skin_variations.items()]
        for image, tone_key in variants:
            if isinstance(image, str) and image:
                lines = captions.setdefault(image, [])
                lines += [line for line in caption_lines(entry, vendor, tone_key) if line not in lines]
    return captions


def _tone_phrase(tone_key: str) -> str:
    """`1F3FD` -> `medium skin tone`; `1F3FB-1F3FF` -> `light skin tone and dark skin tone`."""
    tones = list(dict.fromkeys(SKIN_TONES.get(code.upper(), code.lower()) for code in tone_key.split("-")))
    return " and ".join(f"{tone} skin tone" for tone in tones)


def _is_plain_png_name(name: str) -> bool:
    """`1f600.png` yes; `../x.png`, `a/b.png`, `x.txt` no: emoji.json names the files we write."""
    return PurePosixPath(name).name == name and "\\" not in name and name.endswith(".png")


def _is_safe_member(member: tarfile.TarInfo) -> bool:
    """A regular file whose name cannot leave the extraction folder (no links, devices, `..`, `/…`)."""
    parts = PurePosixPath(member.name).parts
    return member.isfile() and not member.name.startswith("/") and ".." not in parts


def _is_expected_png(data: bytes) -> bool:
    """A PNG whose header (IHDR, the first chunk) says IMAGE_SIZE × IMAGE_SIZE."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return False
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return (width, height) == (IMAGE_SIZE, IMAGE_SIZE)


def _read_emoji_json(tarball: Path) -> list[dict]:
    try:
        with tarfile.open(tarball, "r|*") as tar:
            for member in tar:
                if member.name == "package/emoji.json" and _is_safe_member(member):
                    return json.load(tar.extractfile(member))
    except tarfile.ReadError as error:
        raise ValueError(
            f"{tarball} is not a readable tarball ({error}): pass an emoji-datasource-<vendor> .tgz"
        ) from None
    raise ValueError(f"{tarball} has no package/emoji.json: pass an emoji-datasource-<vendor> npm tarball")


def _build_vendor_folder(tarball: Path, vendor: str, folder: Path) -> int:
    """Write the vendor's pairs into a hidden sibling folder, then rename it to `folder`."""
    captions = referenced_images(_read_emoji_json(tarball), vendor)
    unsafe_names = [image for image in captions if not _is_plain_png_name(image)]
    for image in unsafe_names:
        del captions[image]
    with partial_dir(folder.parent, vendor) as partial:
        written, refused = _extract_pairs(tarball, vendor, captions, partial)
        missing = len(captions) - written - refused
        if missing or refused or unsafe_names:
            log.warning(
                "emoji %s: %d referenced images not taken (%d missing from %s, %d not regular files or not %d px PNGs, "
                "%d unsafe names in emoji.json); wrote %d pairs",
                vendor,
                missing + refused + len(unsafe_names),
                missing,
                tarball.name,
                refused,
                IMAGE_SIZE,
                len(unsafe_names),
                written,
            )
        (partial / COMPLETE_MARKER).write_text(f"{written}\n")
        os.rename(partial, folder)
    return written


def _extract_pairs(tarball: Path, vendor: str, captions: dict[str, list[str]], folder: Path) -> tuple[int, int]:
    """Stream the tarball once, writing each wanted PNG and its captions; return (written, refused)."""
    wanted = {f"package/img/{vendor}/{IMAGE_SIZE}/{image}": image for image in captions}
    written = refused = 0
    with tarfile.open(tarball, "r|*") as tar, ProgressBar(total=len(wanted), desc=f"emoji {vendor}", unit="img") as bar:
        for member in tar:
            image = wanted.pop(member.name, None)
            if image is None:
                continue
            if not _is_safe_member(member) or member.size > MAX_PNG_BYTES:
                refused += 1
                continue
            data = tar.extractfile(member).read()
            if not _is_expected_png(data):
                refused += 1
                continue
            (folder / image).write_bytes(data)
            (folder / image).with_suffix(".txt").write_text("\n".join(captions[image]) + "\n", encoding="utf-8")
            written += 1
            bar.update()
    return written, refused


def _write_attribution(out: Path) -> None:
    """Credit the sources of every complete vendor folder under `out`."""
    lines = [
        "Emoji image–caption pairs written by `vqgan-clip data emoji`.",
        "",
        "Data (emoji.json names, short names, skin-tone variants, image files): the emoji-datasource npm packages",
        "by Cal Henderson (iamcal), MIT, https://github.com/iamcal/emoji-data",
        "",
    ]
    lines += [
        f"{vendor}/: {license}"
        for vendor, license in VENDOR_LICENSES.items()
        if (out / vendor / COMPLETE_MARKER).is_file()
    ]
    with atomic_path(out / "ATTRIBUTION") as path:
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

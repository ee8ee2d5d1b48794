"""Public taming VQGANs by name: downloaded once from a local stand-in server, checked, cached, reused."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
import yaml
from test_vqgan_model import TAMING_YAML, images, taming_checkpoint_state

import vqgan
from imagetext.download import CACHE_ENV, DownloadError, cache_dir
from vqgan import pretrained
from vqgan.lightning import VQGANModule
from vqgan.pretrained import PublicVQGAN


class Files(BaseHTTPRequestHandler):
    """Serves `files` (path -> bytes); a path in `short` announces more bytes than it sends."""

    files: dict[str, bytes] = {}
    short: set[str] = set()
    requests: list[str] = []

    def do_GET(self):
        self.requests.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) + (1000 if self.path in self.short else 0)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    state = taming_checkpoint_state()
    torch.save({"state_dict": state}, tmp_path / "last.ckpt")
    Files.files = {"/model.yaml": TAMING_YAML.encode(), "/last.ckpt": (tmp_path / "last.ckpt").read_bytes()}
    Files.short, Files.requests = set(), []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield {"url": f"http://127.0.0.1:{httpd.server_port}", "state": state}
    httpd.shutdown()
    httpd.server_close()


def public(monkeypatch, url: str, config: tuple[str, ...] = ("/model.yaml",), ckpt=("/last.ckpt",)) -> None:
    entry = PublicVQGAN("a tiny stand-in", tuple(url + p for p in config), tuple(url + p for p in ckpt))
    monkeypatch.setitem(pretrained.PUBLIC_VQGANS, "tiny_taming", entry)


def test_a_public_name_downloads_once_loads_strictly_and_is_reused(server, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    public(monkeypatch, server["url"], ckpt=("/gone.ckpt", "/last.ckpt"))  # the first URL is dead: the mirror serves
    model = vqgan.load("tiny_taming")
    assert torch.equal(model.quantize.embedding.weight, server["state"]["quantize.embedding.weight"])
    assert model.encode_codes(images()).shape == (2, 8, 8)
    cached = sorted(path.name for path in (tmp_path / "cache" / "taming").iterdir())
    assert cached == ["tiny_taming.ckpt", "tiny_taming.yaml"]
    assert Files.requests == ["/model.yaml", "/gone.ckpt", "/last.ckpt"]
    vqgan.load("tiny_taming")
    assert len(Files.requests) == 3  # the second load is served from the cache


def test_a_truncated_download_leaves_nothing_and_names_the_url_and_the_place_by_hand(server, tmp_path, monkeypatch):
    Files.short = {"/last.ckpt"}
    public(monkeypatch, server["url"])
    with pytest.raises(DownloadError) as error:
        pretrained.public_files("tiny_taming", cache=tmp_path / "cache", quiet=True)
    message = str(error.value)
    assert "\n" not in message and f"{server['url']}/last.ckpt" in message and "bytes" in message
    assert f"by hand to {tmp_path / 'cache' / 'taming' / 'tiny_taming.ckpt'}" in message
    assert sorted(path.name for path in (tmp_path / "cache" / "taming").iterdir()) == ["tiny_taming.yaml"]


def test_a_checkpoint_that_does_not_fit_its_config_is_not_kept(server, tmp_path, monkeypatch):
    Files.files["/last.ckpt"] = Files.files["/last.ckpt"][: len(Files.files["/last.ckpt"]) // 2]  # a broken file
    public(monkeypatch, server["url"])
    with pytest.raises(DownloadError):
        pretrained.public_files("tiny_taming", cache=tmp_path / "cache", quiet=True)
    assert not (tmp_path / "cache" / "taming" / "tiny_taming.ckpt").exists()
    assert not list((tmp_path / "cache" / "taming").glob(".*tmp"))


def test_offline_is_one_line_naming_the_url(tmp_path, monkeypatch):
    public(monkeypatch, "http://127.0.0.1:9")  # the discard port: nothing listens
    with pytest.raises(DownloadError) as error:
        pretrained.public_files("tiny_taming", cache=tmp_path, quiet=True)
    assert "\n" not in str(error.value) and "http://127.0.0.1:9/model.yaml" in str(error.value)
    assert not list(tmp_path.rglob("*.yaml"))


def test_the_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "vqgan-clip"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_an_unknown_name_lists_the_shipped_and_the_public_ones():
    with pytest.raises(ValueError, match=r"shipped: shapes.*public taming VQGANs: vqgan_imagenet_f16_1024"):
        vqgan.load("imagenet_f16_16384")


def test_vqgan_fit_can_start_from_a_public_taming_vqgan_by_name(server, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    public(monkeypatch, server["url"])
    params = yaml.safe_load(TAMING_YAML)["model"]["params"]
    module = VQGANModule(
        {"ddconfig": params["ddconfig"], "embed_dim": 8, "n_embed": 16},
        perceptual_weight=0.0,
        disc_ndf=8,
        disc_layers=2,
        init_from_taming={"name": "tiny_taming"},
    )
    assert torch.equal(module.model.quantize.embedding.weight, server["state"]["quantize.embedding.weight"])
    disc = server["state"]["loss.discriminator.main.6.running_var"]
    assert torch.equal(module.discriminator.main[6].running_var, disc)
    with pytest.raises(ValueError, match="init_from_taming takes"):
        VQGANModule(
            {"ddconfig": params["ddconfig"], "embed_dim": 8, "n_embed": 16}, init_from_taming={"config": "x.yaml"}
        )

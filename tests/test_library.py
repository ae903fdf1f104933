"""The model library: folder layouts (ComfyUI, A1111), name resolution, path safety, the config
file and `lienzo models`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from lienzo.cli import main
from lienzo.cli.arguments import add_library_arguments, library_from_args
from lienzo.errors import InvalidArgumentError, ModelNotFoundError
from lienzo.io import library as library_module
from lienzo.io.library import (
    BUILTIN_FOLDER,
    BUILTIN_NAME,
    KINDS,
    ModelLibrary,
    config_path,
    library_from_config,
    read_config,
)


@pytest.fixture(autouse=True)
def no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No config file of the machine's user, and a current folder of the test's own."""
    monkeypatch.delenv("LIENZO_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)


def touch(path: Path, size: int = 8) -> Path:
    """A file of `size` bytes, its folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    return path


def diffusers_folder(path: Path) -> Path:
    """A diffusers pipeline folder (only the files that mark it)."""
    touch(path / "model_index.json")
    touch(path / "unet" / "diffusion_pytorch_model.safetensors")
    touch(path / "vae" / "diffusion_pytorch_model.safetensors")
    touch(path / "vae" / "config.json")
    return path


def symlink(link: Path, target: Path) -> None:
    """A symlink, or skip where the system cannot make one."""
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(target, link, target_is_directory=target.is_dir())
    except (OSError, NotImplementedError):
        pytest.skip("symlinks are not available here")


def test_builtin_folder_is_the_pipelines_builtin_model():
    assert BUILTIN_FOLDER == BUILTIN_FOLDER
    assert (BUILTIN_FOLDER / "model_index.json").is_file()


def test_comfyui_layout_resolves_every_kind_by_stem(tmp_path):
    root = tmp_path / "ComfyUI" / "models"
    files = {
        "checkpoints": touch(root / "checkpoints" / "sd15.safetensors"),
        "loras": touch(root / "loras" / "style" / "ink.safetensors"),
        "embeddings": touch(root / "embeddings" / "badhands.pt"),
        "hypernetworks": touch(root / "hypernetworks" / "anime.pt"),
        "controlnet": touch(root / "controlnet" / "canny.safetensors"),
        "vae": touch(root / "vae" / "kl-f8.safetensors"),
        "upscale_models": touch(root / "upscale_models" / "4x.pth"),
        "vae_approx": touch(root / "vae_approx" / "taesd_decoder.safetensors"),
    }
    library = ModelLibrary(root)
    stems = {"loras": "ink", "vae": "kl-f8"}
    for kind, path in files.items():
        assert library.resolve(kind, stems.get(kind, path.stem)) == path
    assert set(files) == set(KINDS)
    assert library.resolve("lora", "style/ink") == files["loras"]  # singular kind names are accepted


def test_a1111_layout_with_embeddings_beside_the_models_folder(tmp_path):
    webui = tmp_path / "stable-diffusion-webui"
    root = webui / "models"
    checkpoint = touch(root / "Stable-diffusion" / "v1-5-pruned.ckpt")
    lora = touch(root / "Lora" / "ink.safetensors")
    lycoris = touch(root / "LyCORIS" / "loha.safetensors")
    vae = touch(root / "VAE" / "vae-ft-mse.safetensors")
    control = touch(root / "ControlNet" / "control_canny.pth")
    hyper = touch(root / "hypernetworks" / "anime.pt")
    taesd = touch(root / "VAE-approx" / "taesd_decoder.pth")
    embedding = touch(webui / "embeddings" / "easynegative.safetensors")
    library = ModelLibrary(root)
    assert library.resolve("vae_approx", "taesd_decoder") == taesd
    assert library.resolve("checkpoints", "v1-5-pruned") == checkpoint
    assert library.resolve("loras", "ink") == lora
    assert library.resolve("loras", "loha") == lycoris
    assert library.resolve("vae", "vae-ft-mse") == vae
    assert library.resolve("controlnet", "control_canny") == control
    assert library.resolve("hypernetworks", "anime") == hyper
    assert library.resolve("embeddings", "easynegative") == embedding
    assert library.folders("embeddings") == (root / "embeddings", webui / "embeddings")


def test_nested_folders_and_relative_paths_with_or_without_suffix(tmp_path):
    root = tmp_path / "models"
    ink = touch(root / "loras" / "sd15" / "style" / "ink.safetensors")
    library = ModelLibrary(root, builtin=False)
    for name in ("ink", "style/ink", "sd15/style/ink", "sd15/style/ink.safetensors", "ink.safetensors"):
        assert library.resolve("loras", name) == ink, name
    assert library.resolve("loras", "sd15\\style\\ink") == ink  # names written on Windows
    assert [(entry.name, entry.path) for entry in library.list("loras")] == [("sd15/style/ink", ink)]


def test_diffusers_folders_are_models_and_are_not_searched_inside(tmp_path):
    root = tmp_path / "models"
    sdxl = diffusers_folder(root / "checkpoints" / "sdxl")
    vae = touch(root / "vae" / "sdxl-vae" / "config.json").parent
    touch(vae / "diffusion_pytorch_model.safetensors")
    library = ModelLibrary(root, builtin=False)
    assert library.resolve("checkpoints", "sdxl") == sdxl
    assert library.resolve("vae", "sdxl-vae") == vae
    assert [entry.name for entry in library.list("checkpoints")] == ["sdxl"]
    assert [entry.name for entry in library.list("vae")] == ["sdxl-vae"]


def test_suffix_priority_and_the_other_files_by_their_suffix(tmp_path):
    root = tmp_path / "models"
    safe = touch(root / "checkpoints" / "model.safetensors")
    ckpt = touch(root / "checkpoints" / "model.ckpt")
    folder = diffusers_folder(root / "checkpoints" / "model")
    hyper_pt = touch(root / "hypernetworks" / "h.pt")
    touch(root / "hypernetworks" / "h.safetensors")
    touch(root / "loras" / "notes.txt")
    library = ModelLibrary(root, builtin=False)
    assert library.resolve("checkpoints", "model") == safe
    assert library.resolve("checkpoints", "model.ckpt") == ckpt
    assert library.resolve("hypernetworks", "h") == hyper_pt  # hypernetworks prefer .pt
    names = {entry.name: entry.path for entry in library.list("checkpoints")}
    assert names == {"model": safe, "model.ckpt": ckpt, "model/": folder}
    assert library.resolve("checkpoints", "model/") == folder
    assert library.list("loras") == []
    with pytest.raises(ModelNotFoundError):
        library.resolve("loras", "notes")


def test_stems_with_dots(tmp_path):
    root = tmp_path / "models"
    dotted = touch(root / "checkpoints" / "sd-v1.5.safetensors")
    double = touch(root / "loras" / "ink.pt.safetensors")
    library = ModelLibrary(root)
    assert library.resolve("checkpoints", "sd-v1.5") == dotted
    assert library.resolve("loras", "ink.pt") == double


def test_not_found_names_the_kind_every_folder_and_close_matches(tmp_path):
    root = tmp_path / "models"
    touch(root / "loras" / "detail-tweaker.safetensors")
    library = ModelLibrary(root)
    with pytest.raises(ModelNotFoundError) as caught:
        library.resolve("loras", "detail-tweeker")
    message = str(caught.value)
    assert "LoRA" in message and "'detail-tweeker'" in message
    for folder in library.folders("loras"):
        assert str(folder.absolute()) in message
    assert f"{(root / 'Lora').absolute()} (does not exist)" in message
    assert "close matches: detail-tweaker" in message
    with pytest.raises(ModelNotFoundError) as caught:
        ModelLibrary(root).resolve("embeddings", "nothing-like-it")
    assert str((tmp_path / "embeddings").absolute()) in str(caught.value)
    assert "close matches" not in str(caught.value)


def test_ambiguous_stems_are_refused_and_a_whole_relative_path_decides(tmp_path):
    root = tmp_path / "models"
    first = touch(root / "loras" / "a" / "ink.safetensors")
    second = touch(root / "Lora" / "b" / "ink.pt")
    library = ModelLibrary(root)
    with pytest.raises(InvalidArgumentError) as caught:
        library.resolve("loras", "ink")
    assert str(first) in str(caught.value) and str(second) in str(caught.value)
    assert library.resolve("loras", "a/ink") == first
    assert library.resolve("loras", "b/ink") == second
    top = touch(root / "loras" / "ink.safetensors")
    assert library.resolve("loras", "ink") == top  # the whole relative path wins over sub-folder stems


def test_earlier_folders_win_a_name_found_in_several(tmp_path):
    root = tmp_path / "models"
    comfy = touch(root / "loras" / "ink.safetensors")
    touch(root / "Lora" / "ink.safetensors")
    assert ModelLibrary(root).resolve("loras", "ink") == comfy


def test_override_folders_replace_the_roots_folders_for_their_kind(tmp_path):
    root = tmp_path / "models"
    touch(root / "loras" / "ink.safetensors")
    elsewhere = touch(tmp_path / "my-loras" / "ink.safetensors")
    library = ModelLibrary(root, loras=tmp_path / "my-loras")
    assert library.folders("loras") == (tmp_path / "my-loras",)
    assert library.resolve("loras", "ink") == elsewhere
    assert ModelLibrary(str(root)).root == root  # text paths become Paths


@pytest.mark.parametrize(
    "name", ["../ink", "a/../../ink", "..", "/etc/passwd", "C:\\models\\ink", "\\\\host\\x"]
)
def test_paths_are_refused_when_paths_are_not_allowed(tmp_path, name):
    touch(tmp_path / "ink.safetensors")
    library = ModelLibrary(tmp_path / "models", allow_paths=False)
    with pytest.raises(InvalidArgumentError, match="is a path"):
        library.resolve("loras", name)


def test_allowed_paths_resolve_to_themselves(tmp_path, monkeypatch):
    outside = touch(tmp_path / "somewhere" / "ink.safetensors")
    folder = diffusers_folder(tmp_path / "somewhere" / "pipe")
    library = ModelLibrary(tmp_path / "models", allow_paths=True)
    assert library.resolve("loras", outside) == outside
    assert library.resolve("loras", str(outside)) == outside
    assert library.resolve("checkpoints", folder) == folder
    monkeypatch.chdir(tmp_path)
    assert library.resolve("loras", "somewhere/ink.safetensors") == Path("somewhere/ink.safetensors")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        library.resolve("loras", tmp_path / "absent.safetensors")
    with pytest.raises(InvalidArgumentError):
        ModelLibrary(tmp_path / "models").resolve("loras", outside)  # the default refuses paths


def test_symlinks_that_leave_the_folders_are_refused(tmp_path):
    root = tmp_path / "models"
    secret = touch(tmp_path / "outside" / "secret.safetensors")
    symlink(root / "loras" / "evil.safetensors", secret)
    symlink(root / "loras" / "linked", tmp_path / "outside")
    safe = ModelLibrary(root, builtin=False)
    for name in ("evil", "linked/secret"):
        with pytest.raises(InvalidArgumentError, match="leads outside"):
            safe.resolve("loras", name)
    assert safe.list("loras") == []
    trusting = ModelLibrary(root, allow_paths=True, builtin=False)
    assert trusting.resolve("loras", "evil") == root / "loras" / "evil.safetensors"
    assert {entry.name for entry in trusting.list("loras")} == {"evil", "linked/secret"}


def test_a_symlinked_kind_folder_and_symlinks_inside_it_are_allowed(tmp_path):
    shared = tmp_path / "nas" / "loras"
    ink = touch(shared / "ink.safetensors")
    symlink(shared / "alias.safetensors", ink)
    symlink(tmp_path / "models" / "loras", shared)
    symlink(shared / "loop", shared)  # a cycle is walked once
    library = ModelLibrary(tmp_path / "models", builtin=False)
    assert library.resolve("loras", "ink") == tmp_path / "models" / "loras" / "ink.safetensors"
    assert library.resolve("loras", "alias") == tmp_path / "models" / "loras" / "alias.safetensors"
    assert {entry.name for entry in library.list("loras")} == {"ink", "alias"}


def test_the_builtin_model_is_the_first_checkpoint_shapes_v2(tmp_path):
    library = ModelLibrary(tmp_path / "models")
    assert library.resolve("checkpoints", BUILTIN_NAME) == BUILTIN_FOLDER
    listed = [(entry.name, entry.path, entry.kind) for entry in library.list("checkpoints")]
    assert listed[0] == (BUILTIN_NAME, BUILTIN_FOLDER, "checkpoints")
    assert BUILTIN_NAME == "shapes-v2" and [name for name, _, _ in listed[1:]] == ["shapes-v1"]
    mine = diffusers_folder(tmp_path / "models" / "checkpoints" / BUILTIN_NAME)
    assert library.resolve("checkpoints", BUILTIN_NAME) == mine  # the user's own folders come first
    with pytest.raises(ModelNotFoundError):
        ModelLibrary(tmp_path / "models", builtin=False).resolve("checkpoints", "shapes")


def test_builtin_files_resolve_by_name_and_yield_to_the_users_own(tmp_path, monkeypatch):
    shipped = tmp_path / "builtin" / "star.safetensors"
    shipped.parent.mkdir()
    shipped.write_bytes(b"weights")
    monkeypatch.setitem(
        library_module.BUILTIN_MODELS, "loras", (("star", shipped), ("gone", tmp_path / "x.pt"))
    )
    library = ModelLibrary(tmp_path / "models")
    assert library.resolve("loras", "star") == shipped
    assert [entry.name for entry in library.list("loras")] == ["star"]
    mine = tmp_path / "models" / "loras" / "star.safetensors"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"mine")
    assert library.resolve("loras", "star") == mine
    with pytest.raises(ModelNotFoundError):
        ModelLibrary(tmp_path / "other", builtin=False).resolve("loras", "star")


def test_unknown_kinds_and_empty_names(tmp_path):
    library = ModelLibrary(tmp_path)
    with pytest.raises(InvalidArgumentError, match="known kinds"):
        library.resolve("styles", "x")
    with pytest.raises(InvalidArgumentError):
        library.resolve("loras", " ")


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_config_file_from_the_environment_variable(tmp_path, monkeypatch):
    config = write_config(
        tmp_path / "conf" / "lienzo.toml", '[models]\nroot = "library"\nloras = "~/loras"\n'
    )
    monkeypatch.setenv("LIENZO_CONFIG", str(config))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write_config(Path("lienzo.toml"), '[models]\nroot = "ignored"\n')  # the variable comes first
    assert config_path() == config
    library = library_from_config()
    assert library.root == tmp_path / "conf" / "library"  # relative to the config file's folder
    assert library.loras == tmp_path / "home" / "loras"
    assert library.allow_paths is False
    flags = library_from_config(root=tmp_path / "flag", loras=None, allow_paths=True)
    assert flags.root == tmp_path / "flag" and flags.loras == tmp_path / "home" / "loras"
    monkeypatch.setenv("LIENZO_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ModelNotFoundError, match="LIENZO_CONFIG"):
        library_from_config()


def test_config_file_search_order(tmp_path):
    assert config_path() is None and library_from_config() == ModelLibrary()
    user = write_config(tmp_path / "xdg" / "lienzo" / "config.toml", '[models]\nroot = "/user/models"\n')
    assert config_path() == user and library_from_config().root == Path("/user/models")
    local = write_config(Path("lienzo.toml"), '[models]\nroot = "here"\n')
    assert config_path() == Path.cwd() / local and library_from_config().root == Path.cwd() / "here"


def test_a1111_and_comfyui_installs_in_the_config(tmp_path):
    webui = tmp_path / "webui"
    embedding = touch(webui / "embeddings" / "neg.pt")
    a1111 = read_config(write_config(tmp_path / "a.toml", f'[models]\na1111 = "{webui}"\n'))
    assert a1111.root == webui / "models"
    assert a1111.resolve("embeddings", "neg") == embedding
    comfy = read_config(write_config(tmp_path / "c.toml", '[models]\ncomfyui = "ComfyUI"\nvae = "/vae"\n'))
    assert comfy.root == tmp_path / "ComfyUI" / "models" and comfy.vae == Path("/vae")
    assert read_config(write_config(tmp_path / "e.toml", "[server]\nport = 1\n")) == ModelLibrary()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[models]\nroots = "x"\n', "unknown key models.roots"),
        ('[models]\nroot = "x"\na1111 = "y"\n', "only one of"),
        ("[models]\nroot = 3\n", "must be a folder path"),
        ("[models\nroot = 'x'\n", "cannot read"),
        ('models = "x"\n', "must be a table"),
    ],
)
def test_config_mistakes_are_user_errors(tmp_path, text, fragment):
    with pytest.raises(InvalidArgumentError, match=fragment):
        read_config(write_config(tmp_path / "bad.toml", text))


def test_flags_beat_the_config_file(tmp_path):
    write_config(Path("lienzo.toml"), '[models]\nroot = "from-config"\nembeddings = "emb"\n')
    parser = argparse.ArgumentParser()
    add_library_arguments(parser)
    library = library_from_args(parser.parse_args([]))
    assert library.root == Path.cwd() / "from-config" and library.allow_paths
    library = library_from_args(
        parser.parse_args(["--models-dir", "flag", "--lora-dir", "L", "--hypernetwork-dir", "H"])
    )
    assert library.root == Path("flag") and library.loras == Path("L") and library.hypernetworks == Path("H")
    assert library.embeddings == Path.cwd() / "emb"
    library = library_from_args(parser.parse_args(["--embeddings-dir", "E"]))
    assert library.embeddings == Path("E")


def test_lienzo_models_lists_every_kind(tmp_path, capsys):
    root = tmp_path / "models"
    touch(root / "checkpoints" / "sd15.safetensors", size=3 * 1024 * 1024)
    touch(root / "loras" / "style" / "ink.safetensors", size=2048)
    assert main(["models", "--models-dir", str(root)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"models root: {root}"
    for kind in KINDS:
        assert any(line.startswith(f"{kind} (") for line in lines), kind
    sd15 = next(line for line in lines if line.strip().startswith("sd15 "))
    assert str(root / "checkpoints" / "sd15.safetensors") in sd15 and sd15.endswith("3.0 MB")
    assert any(line.split()[:2] == [BUILTIN_NAME, "(built-in)"] for line in lines)
    ink = next(line for line in lines if line.strip().startswith("style/ink "))
    assert ink.endswith("2.0 KB")
    assert f"no vae folder: create {root / 'vae'} (or {root / 'VAE'})" in out


def test_lienzo_models_one_kind_relative_paths_and_empty_folders(tmp_path, capsys):
    touch(Path("models") / "Lora" / "ink.safetensors")
    (Path("models") / "hypernetworks").mkdir()
    assert main(["models", "--kind", "lora"]) == 0
    out = capsys.readouterr().out
    assert "loras (models/loras, models/Lora, models/LyCORIS):" in out
    assert "models/Lora/ink.safetensors" in out and "checkpoints" not in out
    assert main(["models", "--kind", "hypernetworks"]) == 0
    assert "no .pt, .safetensors files found" in capsys.readouterr().out


def test_lienzo_models_reports_a_bad_config_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LIENZO_CONFIG", str(write_config(tmp_path / "bad.toml", "[models]\nx = 'y'\n")))
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown key models.x" in err and len(err.splitlines()) == 1

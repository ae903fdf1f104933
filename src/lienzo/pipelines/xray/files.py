"""The x-ray's folder: image.png, tokens.json, schedule.json, sigmas.png, trajectory.png,
attention/NN-WORD.png and index.html, a page that shows them all with nothing loaded from the internet."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from PIL import Image

from lienzo.io.atomic import atomic_path
from lienzo.io.checkpoints import staged_output
from lienzo.pipelines.metadata import save_png
from lienzo.pipelines.output import check_writable_folder
from lienzo.pipelines.xray.pictures import sigma_plot, trajectory_rows, trajectory_strip

ATTENTION_FOLDER = "attention"
PAGE_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
img { image-rendering: pixelated; }
table { border-collapse: collapse; margin: 0.4em 0; } td, th { border: 1px solid #ccc; padding: 2px 6px; }
.maps { display: flex; flex-wrap: wrap; gap: 12px; } .maps figure { margin: 0; text-align: center; }
.maps img { width: 160px; height: auto; border: 1px solid #999; }
.weighted { background: #fff3c4; } .embedding { background: #d8ecff; }
"""


def word_file_name(index: int, text: str) -> str:
    """`NN-word.png`: the word's index in the prompt (two digits or more) and its text, file-name safe."""
    safe = re.sub(r"[^a-z0-9_-]+", "_", text.lower()).strip("_") or "word"
    return f"{index:02d}-{safe}.png"


def _save_image(image: Image.Image, path: Path) -> Path:
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")
    return path


def _save_text(text: str, path: Path) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def save_xray(xray, folder: Path) -> list[Path]:
    """Write every x-ray file into `folder` (made if needed; other files in it are left alone, the
    attention/ subfolder is replaced as a whole); returns the paths written."""
    check_writable_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    title = f"{xray.schedule.sampler} / {xray.schedule.scheduler}: {len(xray.schedule.sigmas) - 1} steps"
    written = [
        save_png(xray.image, folder / "image.png", xray.image.info["lienzo"]),
        _save_text(json.dumps(xray.tokens.to_json(), indent=1), folder / "tokens.json"),
        _save_text(json.dumps(xray.schedule.to_json(), indent=1), folder / "schedule.json"),
        _save_image(sigma_plot(list(xray.schedule.sigmas), title), folder / "sigmas.png"),
    ]
    if xray.trajectory:
        strip = trajectory_strip(trajectory_rows(xray.trajectory))
        written.append(_save_image(strip, folder / "trajectory.png"))
    names = [word_file_name(entry.word.index, entry.word.text) for entry in xray.maps]
    with staged_output(folder / ATTENTION_FOLDER) as staged:
        staged.mkdir()
        for entry, name in zip(xray.maps, names, strict=True):
            entry.image().save(staged / name, format="PNG")
    written += [folder / ATTENTION_FOLDER / name for name in names]
    written.append(_save_text(xray_page(xray, names), folder / "index.html"))
    return written


def _token_table(tower) -> str:
    rows = []
    for chunk in tower.chunks:
        rows.append(f"<tr><th colspan='5'>chunk {chunk.index} ({len(chunk.tokens)} of 75 tokens)</th></tr>")
        for token in chunk.tokens:
            kind = "embedding" if token.embedding else ("weighted" if token.weight != 1 else "")
            word = "" if token.word is None else str(token.word)
            rows.append(
                f"<tr class='{kind}'><td>{token.position}</td><td>{token.id}</td>"
                f"<td>{html.escape(token.text)}</td><td>{token.weight:.3g}</td><td>{word}</td></tr>"
            )
    header = "<tr><th>position</th><th>id</th><th>token</th><th>weight</th><th>word</th></tr>"
    return f"<h3>tokenizer {tower.tokenizer}</h3><table>{header}{''.join(rows)}</table>"


def xray_page(xray, names: list[str]) -> str:
    """The self-contained index.html (inline style, images by relative path, no scripts)."""
    options = xray.options
    settings = (
        f"seed {options.seed}, {options.width}x{options.height}, {options.steps} steps, CFG {options.cfg:g}, "
        f"{options.sampler} / {options.scheduler}"
    )
    tags = "".join(
        f"<li>&lt;{tag.kind}:{html.escape(tag.name)}&gt; text encoder {tag.text_strength:g}, "
        f"UNet {tag.unet_strength:g}</li>"
        for tag in xray.tokens.tags
    )
    maps = "".join(
        f"<figure><img src='{ATTENTION_FOLDER}/{name}' alt='attention map of {html.escape(entry.word.text)}'>"
        f"<figcaption>{entry.word.index}: {html.escape(entry.word.text)}</figcaption></figure>"
        for entry, name in zip(xray.maps, names, strict=True)
    )
    timesteps = [f"{t:.2f}" for t in xray.schedule.timesteps] + [""]
    steps = "".join(
        f"<tr><td>{index}</td><td>{sigma:.5g}</td><td>{timestep}</td></tr>"
        for index, (sigma, timestep) in enumerate(zip(xray.schedule.sigmas, timesteps, strict=True))
    )
    towers = "".join(_token_table(tower) for tower in xray.tokens.towers)
    trajectory = (
        "<h2>Trajectory</h2><img src='trajectory.png' alt='x0 prediction and noisy latent every few steps'>"
        if xray.trajectory
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>x-ray: {html.escape(options.prompt)}</title>
<style>{PAGE_STYLE}</style></head><body>
<h1>x-ray: {html.escape(options.prompt)}</h1>
<p>{html.escape(settings)}</p>
<img src="image.png" alt="{html.escape(options.prompt)}" width="256">
<h2>Attention per word</h2><div class="maps">{maps}</div>
{trajectory}
<h2>Schedule</h2><img src="sigmas.png" alt="sigma per step">
<table><tr><th>step</th><th>sigma</th><th>timestep</th></tr>{steps}</table>
<h2>Tokens</h2><p>{xray.tokens.breaks} BREAK(s); network tags:</p><ul>{tags or "<li>none</li>"}</ul>
{towers}
</body></html>
"""

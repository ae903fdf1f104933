"""Each generated image's settings record, `image.info["lienzo"]` (keys: options.RECORD_KEYS)."""

from __future__ import annotations

from PIL import Image

from lienzo.pipelines.options import GenerationOptions
from lienzo.pipelines.safety import apply_safety_checker
from lienzo.pipelines.steps import PromptTexts


def attach_records(
    pipe,
    images: list[Image.Image],
    options: GenerationOptions,
    *,
    mask: dict | None = None,
    refiner=None,
    texts: PromptTexts | None = None,
) -> None:
    """Put each image's settings (GenerationOptions.to_record) into image.info["lienzo"]; inpainting adds
    its `mask` settings ({"blur", "only_masked", "padding"}), a refined image its refiner's hash, and
    every image the LoRAs and hypernetworks applied while it was made and the embeddings its prompts used
    (name: short hash). Then the safety checker the options ask for checks the finished images: a flagged
    one is blacked out in place and its record says so (lienzo.pipelines.safety)."""
    for index, image in enumerate(images):
        record = options.to_record(
            index,
            model=pipe.name,
            model_hash=pipe.model_hash,
            family=pipe.spec.name,
            refiner_hash=None if refiner is None else refiner.model_hash,
            loras=pipe.loras.hashes(),
            hypernetworks=pipe.hypernetworks.hashes(),
            vae=pipe.vae_name,
            embeddings=pipe.embedding_hashes(() if texts is None else texts.embeddings_used),
        )
        image.info["lienzo"] = {**record, "mask": mask}
    apply_safety_checker(pipe, images, options.safety_checker)

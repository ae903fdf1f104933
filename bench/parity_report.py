"""Print lienzo's max abs error against diffusers per family and component (tiny random weights, fp32).

Run from the repository root: `PYTHONPATH=src:tests python bench/parity_report.py`.
"""

from __future__ import annotations

from parity import PROMPT_FAMILIES, prompt_errors, unet_error, vae_errors
from tiny_models import FAMILIES


def cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.1e}"


def main() -> None:
    print("| family | UNet | VAE encode | VAE decode | context, skip 1 | context, skip 2 | pooled |")
    print("|---|---|---|---|---|---|---|")
    for family in FAMILIES:
        mean_error, decode_error = vae_errors(family)
        context_1 = context_2 = pooled = None
        if family in PROMPT_FAMILIES:
            context_1, pooled = prompt_errors(family, 1)
            context_2, _ = prompt_errors(family, 2)
        row = [unet_error(family), mean_error, decode_error, context_1, context_2, pooled]
        print(f"| {family} | " + " | ".join(cell(value) for value in row) + " |")


if __name__ == "__main__":
    main()

"""DeepCache's feature reuse state (Ma et al. 2023): the UNet decoder's deep features, kept between calls."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class FeatureReuse:
    """What `UNetModel.forward(..., reuse)` keeps and reads over one sampling run.

    On a call with `refresh` set (or nothing usable kept) the UNet runs whole and keeps `features`: the
    decoder's hidden state just before the output block that takes skip connection `branch`. On the
    other calls it runs only input blocks 0..branch and the output blocks from that one on, on the kept
    features (their first rows, when classifier-free guidance has since dropped the unconditional half).
    `full_calls` and `shallow_calls` count both kinds.
    """

    branch: int = 0
    refresh: bool = True
    features: Tensor | None = None
    latent_shape: tuple[int, ...] = ()
    full_calls: int = 0
    shallow_calls: int = 0

    def usable(self, latent: Tensor) -> bool:
        """Whether a call on these (B, C, H, W) latents may run shallow on the kept features."""
        if self.refresh or self.features is None:
            return False
        return self.features.shape[0] >= latent.shape[0] and self.latent_shape == tuple(latent.shape[1:])

    def keep(self, features: Tensor, latent: Tensor) -> None:
        """Keep the features of a full call on `latent`."""
        self.features, self.latent_shape = features, tuple(latent.shape[1:])

    def kept_rows(self, batch: int) -> Tensor:
        """The kept features of the first `batch` rows (cond rows come first in a guided batch)."""
        return self.features[:batch]
